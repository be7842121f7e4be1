"""Quantizations: reading them from file names, grouping a repo's GGUF files, choosing one.

`parse_quant` follows gglib's `Quantization::from_filename` exactly: ASCII case-insensitive, a match
counts only when flanked by non-alphanumerics (or the string's ends), the longest pattern wins
whatever its place in the table, and a delimited `UD` token right before the match selects the
Unsloth Dynamic variant when the family has one (`…-UD-Q6_K.gguf` → `UD-Q6_K`, but
`…-UD-Q6_K_XL.gguf` → `Q6_K_XL`, as Unsloth's XL files carry no separate UD variant).

Grouping goes beyond gglib: files are grouped by quant, but inside a quant we look at the actual
`-NNNNN-of-MMMMM` shard sets, report missing shards, keep `mmproj-*` projector files out, and set
aside stray files that belong to a different set (`QuantGroup.extra`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from modelfetch.core.errors import SpecError
from modelfetch.core.format import format_bytes

__all__ = [
    "DEFAULT_PREFERENCE",
    "QUANT_PATTERNS",
    "UD_BASES",
    "Quant",
    "QuantGroup",
    "ShardName",
    "choose_quant",
    "describe_groups",
    "group_gguf_files",
    "is_gguf",
    "is_mmproj",
    "mmproj_files",
    "parse_quant",
    "parse_quant_token",
    "parse_shard",
]

QUANT_PATTERNS: tuple[tuple[str, str], ...] = (
    # (pattern as it appears in file names, canonical name)
    ("IQ1_S", "IQ1_S"),
    ("IQ1_M", "IQ1_M"),
    ("TQ1_0", "TQ1_0"),
    ("IQ2_XXS", "IQ2_XXS"),
    ("IQ2_XS", "IQ2_XS"),
    ("IQ2_S", "IQ2_S"),
    ("IQ2_M", "IQ2_M"),
    ("Q2_K_XL", "Q2_K_XL"),
    ("Q2_K_L", "Q2_K_L"),
    ("Q2_K", "Q2_K"),
    ("IQ3_XXS", "IQ3_XXS"),
    ("IQ3_XS", "IQ3_XS"),
    ("IQ3_S", "IQ3_S"),
    ("IQ3_M", "IQ3_M"),
    ("Q3_K_XL", "Q3_K_XL"),
    ("Q3_K_L", "Q3_K_L"),
    ("Q3_K_M", "Q3_K_M"),
    ("Q3_K_S", "Q3_K_S"),
    ("IQ4_XS", "IQ4_XS"),
    ("IQ4_NL", "IQ4_NL"),
    ("Q4_K_XL", "Q4_K_XL"),
    ("Q4_K_L", "Q4_K_L"),
    ("Q4_K_M", "Q4_K_M"),
    ("Q4_K_S", "Q4_K_S"),
    ("Q4_1", "Q4_1"),
    ("Q4_0", "Q4_0"),
    ("MXFP4", "MXFP4"),
    ("Q4", "Q4"),
    ("Q5_K_XL", "Q5_K_XL"),
    ("Q5_K_L", "Q5_K_L"),
    ("Q5_K_M", "Q5_K_M"),
    ("Q5_K_S", "Q5_K_S"),
    ("Q5_0", "Q5_0"),
    ("Q5_1", "Q5_1"),
    ("Q5", "Q5"),
    ("Q6_K_XL", "Q6_K_XL"),
    ("Q6_K_L", "Q6_K_L"),
    ("Q6_K", "Q6_K"),
    ("Q6", "Q6"),
    ("Q8_K_XL", "Q8_K_XL"),
    ("Q8_0", "Q8_0"),
    ("Q8", "Q8"),
    ("BF16", "BF16"),
    ("FP16", "F16"),
    ("F16", "F16"),
    ("FP32", "F32"),
    ("F32", "F32"),
    ("IMATRIX", "imatrix"),
)
"""gglib's pattern table. Order matters only between equally long patterns (first wins)."""

UD_BASES: frozenset[str] = frozenset(
    {
        "IQ1_S",
        "IQ1_M",
        "TQ1_0",
        "IQ2_XXS",
        "IQ2_M",
        "IQ3_XXS",
        "IQ3_S",
        "Q3_K_M",
        "Q3_K_S",
        "IQ4_XS",
        "IQ4_NL",
        "Q4_K_M",
        "Q4_K_S",
        "Q5_K_M",
        "Q5_K_S",
        "Q6_K",
    }
)
"""Families with a distinct Unsloth Dynamic (`UD-`) variant."""

DEFAULT_PREFERENCE: tuple[str, ...] = ("Q5_K_M", "Q4_K_M", "Q5_K_S", "Q4_K_S", "Q6_K", "Q8_0")
"""What to pick, in order, when several quants exist and none was asked for. Never a UD- quant."""

_CANONICAL_NAMES = frozenset(name for _, name in QUANT_PATTERNS)
# ASCII-only case folding: str.upper() would turn "ß" into "SS" and shift every index after it.
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True, order=True)
class Quant:
    """A quantization, e.g. `Q4_K_M`; `ud=True` is its Unsloth Dynamic variant `UD-Q4_K_M`."""

    base: str
    ud: bool = False

    def __post_init__(self) -> None:
        if self.base not in _CANONICAL_NAMES:
            raise ValueError(f"not a canonical quantization name: {self.base!r}")
        if self.ud and self.base not in UD_BASES:
            raise ValueError(f"{self.base} has no UD- variant")

    @property
    def name(self) -> str:
        """The canonical display string: `Q4_K_M`, `UD-Q4_K_M`, `F16`, `imatrix`."""
        return f"UD-{self.base}" if self.ud else self.base

    def __str__(self) -> str:
        return self.name


def _is_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _find_boundary_match(haystack: str, pattern: str) -> int | None:
    """First offset of `pattern` in `haystack` (both already ASCII-uppercased) whose neighbours
    are non-alphanumeric or the string's ends."""
    start = haystack.find(pattern)
    while start != -1:
        end = start + len(pattern)
        before_ok = start == 0 or not _is_alnum(haystack[start - 1])
        after_ok = end == len(haystack) or not _is_alnum(haystack[end])
        if before_ok and after_ok:
            return start
        start = haystack.find(pattern, start + 1)
    return None


def _has_ud_prefix(haystack: str, match_start: int) -> bool:
    """True when the delimited token right before `match_start` is `UD` (`…UD-Q6_K…`)."""
    token_start = match_start - 3
    if token_start < 0:
        return False
    if _is_alnum(haystack[match_start - 1]):
        return False
    if haystack[token_start : match_start - 1] != "UD":
        return False
    return token_start == 0 or not _is_alnum(haystack[token_start - 1])


def parse_quant(filename_or_token: str) -> Quant | None:
    """The quantization named in a file name or a user's token, or None.

    `model-Q4_K_M.gguf`, `q4_k_m`, `ud-q6_k`, `UD_Q4_K_M`, `llama-FP16.gguf` (→ F16) all parse;
    `Deepseek-Q6King-7B.gguf` does not (the match must be delimited).
    """
    haystack = filename_or_token.translate(_ASCII_UPPER)
    best_len = 0
    best: Quant | None = None
    for pattern, name in QUANT_PATTERNS:
        if len(pattern) <= best_len:
            continue
        pos = _find_boundary_match(haystack, pattern)
        if pos is None:
            continue
        ud = name in UD_BASES and _has_ud_prefix(haystack, pos)
        best_len = len(pattern)
        best = Quant(name, ud)
    return best


_PATTERN_NAMES = dict(QUANT_PATTERNS)


def parse_quant_token(token: str) -> Quant | None:
    """A quant the user typed on its own (`q4_k_m`, `UD-Q4_K_M`, `ud_q6_k`, `fp16`), strictly:
    the whole token must be one pattern, optionally after `UD-`/`UD_`. None otherwise, so a typo
    like `Q4-K-M` is rejected instead of being read as `Q4` the way a file name would be.

    `UD-` before a family with no UD variant gives the plain quant (`UD-Q4_K_XL` → `Q4_K_XL`),
    which is how `parse_quant` reads Unsloth's file names, so the request matches the files.
    """
    upper = token.strip().translate(_ASCII_UPPER)
    name = _PATTERN_NAMES.get(upper)
    if name is not None:
        return Quant(name)
    for prefix in ("UD-", "UD_"):
        if upper.startswith(prefix):
            name = _PATTERN_NAMES.get(upper[len(prefix) :])
            if name is not None:
                return Quant(name, ud=name in UD_BASES)
    return None


# --- shard names ------------------------------------------------------------------------------

# DOTALL: whatever comes before the suffix is the prefix, even a (hostile) newline.
_SHARD_RE = re.compile(r"(?P<prefix>.*)-(?P<index>[0-9]+)-of-(?P<count>[0-9]+)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ShardName:
    """`dir/model-00002-of-00005.gguf`: index 2 of 5, base `dir/model.gguf`."""

    path: str
    base: str  # the path with `-NNNNN-of-MMMMM` removed
    index: int  # 1-based
    count: int
    prefix: str  # the path up to the shard suffix (`dir/model`)
    index_width: int  # digits used for the index (5 in `00002`)
    count_text: str  # the count as written (`00005`)
    ext: str  # the extension including its dot (`.gguf`)

    def sibling(self, index: int) -> str:
        """The path the shard `index` of the same set has."""
        return f"{self.prefix}-{index:0{self.index_width}d}-of-{self.count_text}{self.ext}"


def parse_shard(path: str) -> ShardName | None:
    """Parse `-NNNNN-of-MMMMM` right before the file name's extension, like gglib's
    `base_shard_filename`: `model-of-doom-00001-of-00005.gguf` → base `model-of-doom.gguf`.

    None when there is no such suffix, no extension, or the numbers make no sense
    (index 0, count 0, index above count): such a file is treated as a single file.
    """
    slash = path.rfind("/")
    dot = path.rfind(".")
    if dot <= slash:
        return None
    stem, ext = path[:dot], path[dot:]
    match = _SHARD_RE.fullmatch(stem)
    if match is None:
        return None
    index, count = int(match["index"]), int(match["count"])
    if count < 1 or not 1 <= index <= count:
        return None
    prefix = match["prefix"]
    return ShardName(
        path=path,
        base=prefix + ext,
        index=index,
        count=count,
        prefix=prefix,
        index_width=len(match["index"]),
        count_text=match["count"],
        ext=ext,
    )


# --- grouping ---------------------------------------------------------------------------------


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def is_gguf(path: str) -> bool:
    """A `.gguf` file (extension compared case-insensitively)."""
    return path.lower().endswith(".gguf")


def is_mmproj(path: str) -> bool:
    """A multimodal projector (`mmproj-*.gguf`): never part of a quant's model files."""
    return _basename(path).lower().startswith("mmproj")


@dataclass(frozen=True, slots=True)
class QuantGroup:
    """The files of one quantization in a repo.

    `paths` is the chosen file set, sorted: one plain file, or one `-of-M` shard set. When the
    quant also has files that belong to another set (a second shard set, or a single file next
    to a shard set), the set with the most files is kept (ties: a complete set, then the
    alphabetically first base name) and the rest are listed in `extra`, not downloaded.
    `complete` is False when the kept shard set lacks some of its M shards (named in `missing`).
    """

    quant: Quant
    paths: tuple[str, ...]
    total_size: int  # of `paths`
    shard_count: int  # files in `paths`
    complete: bool
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.quant.name

    @property
    def expected_count(self) -> int:
        """How many files a complete set has (present + missing)."""
        return self.shard_count + len(self.missing)

    def describe(self) -> str:
        """`Q4_K_M (4.1 GiB, 1 file)`, `Q8_0 (12.0 GiB, 3 shards)`,
        `Q2_K (2.0 GiB, 2 of 3 shards, incomplete)`."""
        if not self.complete:
            count = f"{self.shard_count} of {self.expected_count} shards, incomplete"
        elif self.shard_count == 1:
            count = "1 file"
        else:
            count = f"{self.shard_count} shards"
        return f"{self.name} ({format_bytes(self.total_size)}, {count})"


@dataclass(slots=True)
class _FileSet:
    key: tuple[str, int]  # (base path, shard count); a single file is (its path, 1)
    sharded: bool
    files: dict[str, int]  # path -> size
    shards: dict[int, ShardName]  # index -> name, for shard sets

    def missing(self) -> tuple[str, ...]:
        if not self.sharded:
            return ()
        any_shard = next(iter(self.shards.values()))
        return tuple(
            any_shard.sibling(i) for i in range(1, any_shard.count + 1) if i not in self.shards
        )


def _pick_set(sets: list[_FileSet]) -> _FileSet:
    def rank(s: _FileSet) -> tuple[int, int, str]:
        return (-len(s.files), 0 if not s.missing() else 1, s.key[0])

    return min(sets, key=rank)


def group_gguf_files(entries: Iterable[tuple[str, int]]) -> list[QuantGroup]:
    """Group `(path, size)` entries of a repo by quantization, sorted by quant name.

    Only `.gguf` files count; `mmproj-*` files and files with no recognisable quant are left out.
    """
    by_quant: dict[Quant, dict[tuple[str, int], _FileSet]] = defaultdict(dict)
    for path, size in entries:
        if not is_gguf(path) or is_mmproj(path):
            continue
        quant = parse_quant(path)
        if quant is None:
            continue
        shard = parse_shard(path)
        key = (shard.base, shard.count) if shard else (path, 1)
        sets = by_quant[quant]
        file_set = sets.get(key)
        if file_set is None:
            file_set = sets[key] = _FileSet(key, shard is not None, {}, {})
        file_set.files[path] = size
        if shard is not None:
            # Two spellings of one index (`-1-of-2` and `-00001-of-2`): the first seen stays,
            # the other is set aside below as extra.
            file_set.shards.setdefault(shard.index, shard)

    groups: list[QuantGroup] = []
    for quant, sets in by_quant.items():
        chosen = _pick_set(list(sets.values()))
        kept = (
            {s.path: chosen.files[s.path] for s in chosen.shards.values()}
            if chosen.sharded
            else dict(chosen.files)
        )
        extra = sorted(
            path for s in sets.values() for path in s.files if s is not chosen or path not in kept
        )
        missing = chosen.missing()
        groups.append(
            QuantGroup(
                quant=quant,
                paths=tuple(sorted(kept)),
                total_size=sum(kept.values()),
                shard_count=len(kept),
                complete=not missing,
                missing=missing,
                extra=tuple(extra),
            )
        )
    groups.sort(key=lambda g: g.name)
    return groups


def mmproj_files(entries: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The `mmproj-*.gguf` projector files among `(path, size)` entries, sorted by path."""
    return sorted((path, size) for path, size in entries if is_gguf(path) and is_mmproj(path))


# --- choosing ---------------------------------------------------------------------------------


def describe_groups(groups: Iterable[QuantGroup]) -> str:
    """One line listing quants with sizes and shard counts, for error messages and `--list`."""
    text = ", ".join(g.describe() for g in groups)
    return text or "none"


def _incomplete_error(group: QuantGroup) -> SpecError:
    return SpecError(
        f"{group.name} is incomplete in this repository: {group.shard_count} of "
        f"{group.expected_count} shards present, missing {', '.join(group.missing)}"
    )


def _match_requested(groups: list[QuantGroup], requested: str) -> QuantGroup | None:
    # Strictly as typed: read as a file name, `Q4_K_N` would be `Q4` and pick the wrong files.
    wanted = parse_quant_token(requested)
    for group in groups:
        if wanted is not None and group.quant == wanted:
            return group
    # gglib's fallback: the display string, case-insensitively (also `UD_` for `UD-`).
    text = requested.strip().upper().replace("UD_", "UD-", 1)
    for group in groups:
        if group.name.upper() == text:
            return group
    return None


def choose_quant(groups: Iterable[QuantGroup], requested: str | None) -> QuantGroup:
    """Pick the quant to download, with gglib's rules.

    - `requested` given: that quant (`UD-Q4_K_M` and `Q4_K_M` are different quants).
    - none requested, one quant available: it.
    - several: the first of `DEFAULT_PREFERENCE` present; UD- quants never match a default.

    Beyond gglib, an incomplete shard set is never returned: asking for one raises, and
    automatic selection passes over it. Every failure is a `SpecError` that lists what the repo
    has, with sizes and shard counts.
    """
    available = sorted(groups, key=lambda g: g.name)
    listing = describe_groups(available)
    if requested is not None:
        group = _match_requested(available, requested)
        if group is None:
            raise SpecError(
                f"quantization {requested!r} is not in this repository (available: {listing})"
            )
        if not group.complete:
            raise _incomplete_error(group)
        return group
    if not available:
        raise SpecError("no quantizations (GGUF files) available in this repository")
    complete = [g for g in available if g.complete]
    if len(available) == 1:
        if not complete:
            raise _incomplete_error(available[0])
        return available[0]
    for preferred in DEFAULT_PREFERENCE:
        for group in complete:
            if group.quant == Quant(preferred):
                return group
    if len(complete) == 1:
        # Only one quant can actually be downloaded; the others are incomplete.
        return complete[0]
    raise SpecError(
        f"multiple quantizations available, please select one (owner/name:QUANT): {listing}"
    )
