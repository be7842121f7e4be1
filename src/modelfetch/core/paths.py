"""Pure path rules: which names from a server may become files, and where partial files live.

Nothing here touches the filesystem; these are string and PurePath computations only, so the same
rules hold on every OS (a name that would be dangerous on Windows is refused on Linux too).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePath, PurePosixPath
from typing import TypeVar, overload

from modelfetch.core.errors import UnsafePathError

MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux/macOS filesystems; NTFS allows 255 UTF-16 units
PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"
# The volatile segment map of a segmented `.part` (transfer/segment_journal.py). It ends in
# neither `.part` nor `.part.json`, so every listing of partials names it explicitly.
JOURNAL_SUFFIX = ".part.map"
PARTIAL_SUFFIXES = (PART_SUFFIX, SIDECAR_SUFFIX, JOURNAL_SUFFIX)
FALLBACK_FILENAME = "download"

_RESERVED_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]}
)
_UNSAFE_FILENAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f-\x9f]')

P = TypeVar("P", bound=PurePath)


def _is_reserved_device(component: str) -> bool:
    # Windows ignores everything after the first dot and trailing spaces: "nul.txt" is NUL.
    stem = component.split(".", 1)[0].rstrip(" ").upper()
    return stem in _RESERVED_DEVICE_NAMES


# Bidirectional controls reorder what a terminal or file manager shows: `x\u202egguf.exe` is
# displayed as `xexe.fugg`. A name from a server must look like what it is.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _control_chars(text: str) -> list[str]:
    return [ch for ch in text if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS]


def safe_relpath(name: str) -> PurePosixPath:
    """A repo-relative path from a server (e.g. a Hub tree entry) as a safe relative path.

    Refuses (UnsafePathError naming the bad part): empty names, absolute paths, `..` and `.`,
    empty components (`a//b`, a trailing `/`), backslashes, colons (Windows drive letters and
    NTFS alternate streams), NUL and other control characters (bidirectional controls such as
    U+202E included: they disguise a name), components over 255 UTF-8 bytes,
    and Windows device names (CON, NUL, COM1, `nul.txt`, ...). The result is NFC-normalised.
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"path must be text, got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name)
    if not text:
        raise UnsafePathError("empty path")
    bad_chars = _control_chars(text)
    if bad_chars:
        raise UnsafePathError(f"path {text!r} contains control character {bad_chars[0]!r}")
    if "\\" in text:
        raise UnsafePathError(f"path {text!r} contains a backslash")
    if ":" in text:
        raise UnsafePathError(f"path {text!r} contains ':' (a drive letter or alternate stream)")
    if text.startswith("/"):
        raise UnsafePathError(f"path {text!r} is absolute")
    components = text.split("/")
    for component in components:
        if component == "":
            raise UnsafePathError(f"path {text!r} has an empty component")
        if component in (".", ".."):
            raise UnsafePathError(f"path {text!r} contains {component!r}")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(
                f"path component {component[:40]!r}... is longer than {MAX_COMPONENT_BYTES} bytes"
            )
        if _is_reserved_device(component):
            raise UnsafePathError(f"path {text!r} uses the reserved device name {component!r}")
    return PurePosixPath(*components)


@overload
def safe_join(base: Path, name: str) -> Path: ...
@overload
def safe_join(base: str | PurePath, name: str) -> PurePath: ...
def safe_join(base: str | PurePath, name: str) -> PurePath:
    """`base / name` for an untrusted `name`; the result is always strictly inside `base`."""
    root = PurePath(base) if isinstance(base, str) else base
    relative = safe_relpath(name)
    joined = root.joinpath(*relative.parts)
    # Belt and braces: safe_relpath already excludes every way out, but the invariant is cheap.
    if joined.parts[: len(root.parts)] != root.parts or len(joined.parts) <= len(root.parts):
        raise UnsafePathError(f"path {name!r} escapes {str(root)!r}")
    return joined


def part_path(dest: P) -> P:
    """Where the bytes of `dest` accumulate until verified: `x.gguf` → `x.gguf.part`, beside it."""
    return dest.with_name(dest.name + PART_SUFFIX)


def sidecar_path(dest: P) -> P:
    """The JSON that says what the `.part` holds (URL, validator, total, digest)."""
    return dest.with_name(dest.name + SIDECAR_SUFFIX)


def journal_path(dest: P) -> P:
    """The small file beside a segmented `.part` that says, cheaply and often, which of its
    bytes were written (trusted only by the same running kernel: transfer/segment_journal.py)."""
    return dest.with_name(dest.name + JOURNAL_SUFFIX)


def sanitize_filename(name: str) -> str:
    """A single safe file name from an untrusted one (Content-Disposition, the last URL segment).

    Keeps only the last path component, replaces characters that are unsafe on any common OS,
    strips leading/trailing dots and spaces (no hidden files, no `..`), defuses Windows device
    names, truncates to 255 UTF-8 bytes keeping the extension, and falls back to "download".
    """
    text = unicodedata.normalize("NFC", name)
    text = re.split(r"[/\\]", text)[-1]
    text = _UNSAFE_FILENAME_CHARS.sub("_", text)
    if not (text.isascii() and text.isprintable()):  # else no control char can be in it
        text = "".join("_" if _control_chars(ch) else ch for ch in text)
    text = text.strip(" .\t")
    if not text:
        return FALLBACK_FILENAME
    if _is_reserved_device(text):
        text = "_" + text
    if len(text.encode("utf-8")) > MAX_COMPONENT_BYTES:
        text = _truncate_keeping_suffix(text)
    return text or FALLBACK_FILENAME


def _truncate_keeping_suffix(text: str) -> str:
    stem, dot, suffix = text.rpartition(".")
    if not dot or not stem or len(suffix.encode("utf-8")) > 32:
        stem, suffix = text, ""
    tail = "." + suffix if suffix else ""
    budget = MAX_COMPONENT_BYTES - len(tail.encode("utf-8"))
    encoded = stem.encode("utf-8")[:budget]
    # Cut on a character boundary, then drop what would be stripped anyway.
    short = encoded.decode("utf-8", errors="ignore").rstrip(" .")
    return short + tail
