"""Property-based fuzzing of every parser that reads text from a user or a server.

Each property: the parser raises nothing but its documented error (most return None on garbage),
its result is internally consistent, and where a form can be written back it round-trips.
Inputs are generated from each grammar's own pieces (plus plain random text), because random
text alone almost never reaches the interesting branches. `@example`s pin the bugs these
properties found.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import unicodedata
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import PurePosixPath

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelfetch.core.errors import SpecError, UnknownItemError, UnsafePathError
from modelfetch.core.headers import (
    ContentRange,
    RateLimit,
    content_disposition_filename,
    origin_of,
    parse_content_length,
    parse_content_range,
    parse_ratelimit,
    parse_retry_after,
    retry_after_seconds,
)
from modelfetch.core.models import MAX_ID, ItemRef
from modelfetch.core.paths import safe_join, safe_relpath, sanitize_filename
from modelfetch.core.quant import (
    QUANT_PATTERNS,
    UD_BASES,
    Quant,
    group_gguf_files,
    parse_quant,
    parse_quant_token,
    parse_shard,
)
from modelfetch.core.spec import HubSpec, UrlSpec, parse_spec

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def soup(*pieces: str, max_size: int = 12) -> st.SearchStrategy[str]:
    """Strings glued from a grammar's pieces: reaches branches random text never does."""
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


# -- specs -------------------------------------------------------------------------------------

ENDPOINT = "http://127.0.0.1:8090/mirror"
REPO_PART = st.from_regex(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,8}[A-Za-z0-9_])?", fullmatch=True)
SPEC_PIECES = soup(
    *"ab.-_:@/ é~#?&=+%",
    "%20",
    "%2F",
    "%3A",
    "%40",
    "%2e%2e",
    "refs",
    "refs/pr/1",
    "pr/",
    "1",
    "//",
    "..",
    "Q4_K_M",
    "ud-q6_k",
    "UD-",
    "\u3000",
    "\t",
    max_size=7,
)
SPEC_FORMS = [
    "{o}/{n}",
    "{o}/{n}{r}",
    "{o}/{n}@{r}",
    "{o}/{n}@{r}:{p}",
    "{o}/{n}@{r}/{p}",
    "{o}/{n}:{p}",
    "{o}/{n}/{p}",
    "hf://{o}/{n}@{r}/{p}",
    "HF://{o}/{n}{r}{p}",
    " {o}/{n}@{r}:{p} ",
    "https://huggingface.co/{o}/{n}/resolve/{r}/{p}",
    "https://hf.co/{o}/{n}/blob/{r}/{p}",
    "https://huggingface.co/{o}/{n}/tree/{r}",
    "http://127.0.0.1:8090/mirror/{o}/{n}/resolve/{r}/{p}",
    "https://example.com/{p}",
]


def _same(a: object, b: object) -> bool:
    """Equal, reading an unset revision as `main` (what the canonical key writes)."""

    def norm(s: object) -> object:
        if isinstance(s, HubSpec) and s.revision is None:
            return dataclasses.replace(s, revision="main")
        return s

    return norm(a) == norm(b)


@FUZZ
@given(REPO_PART, REPO_PART, SPEC_PIECES, SPEC_PIECES, st.sampled_from(SPEC_FORMS))
@example("o", "n", "refs/pr/1a/", "", "https://huggingface.co/{o}/{n}/resolve/{r}/{p}")
@example("o", "n", "a", "%20", "https://huggingface.co/{o}/{n}/resolve/{r}/{p}")
@example("o", "n", "refs", "pr/1/x.gguf", "https://huggingface.co/{o}/{n}/resolve/{r}%2F{p}")
def test_a_spec_parses_or_is_a_spec_error_and_its_key_parses_back_the_same(
    owner: str, name: str, revision: str, path: str, form: str
) -> None:
    text = form.format(o=owner, n=name, r=revision, p=path)
    try:
        spec = parse_spec(text, default_endpoint=ENDPOINT)
    except SpecError:
        return
    key = spec.canonical()
    again = parse_spec(key, default_endpoint=ENDPOINT)
    assert again.canonical() == key  # a key is a fixed point
    if isinstance(spec, HubSpec):  # and a Hub key means exactly the same request
        assert _same(again, spec), (text, spec, key, again)
    if isinstance(spec, HubSpec):
        assert spec.path is None or spec.quant is None
        assert key.startswith("hf://") and "\n" not in key


def test_a_repo_path_that_looks_like_a_pr_ref_stays_a_path() -> None:
    spec = HubSpec("o/n", "refs", path="pr/1/x.gguf")
    assert parse_spec(spec.canonical()) == spec
    assert parse_spec("o/n@refs/pr/1/x.gguf") == HubSpec("o/n", "refs/pr/1", path="x.gguf")
    url = "https://huggingface.co/o/n/resolve/refs/pr/1a/x"
    assert parse_spec(url) == HubSpec("o/n", "refs", path="pr/1a/x")


def test_a_path_with_edge_whitespace_cannot_be_written_back_so_it_is_refused() -> None:
    for text in (
        "https://huggingface.co/o/n/resolve/main/%20",
        "https://hf.co/o/n/blob/v1/x%E3%80%80",
    ):
        try:
            spec = parse_spec(text)
        except SpecError as exc:
            assert "whitespace" in str(exc)
        else:
            raise AssertionError(f"{text!r} parsed as {spec}")


@FUZZ
@given(st.text(max_size=80))
def test_any_text_is_a_spec_or_a_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text, default_endpoint=ENDPOINT)
    except SpecError as exc:
        assert str(exc)
        return
    assert isinstance(spec, HubSpec | UrlSpec)
    spec.canonical()


# -- Content-Range, Content-Length -------------------------------------------------------------

RANGE_PIECES = soup(*"0123456789-/* \t,=", "bytes", "BYTES", "bytes ", "18446744073709551616")


@FUZZ
@given(st.one_of(RANGE_PIECES, st.text(max_size=40)))
def test_content_range_never_raises_and_is_consistent(text: str) -> None:
    parsed = parse_content_range(text)
    if parsed is None:
        return
    start, end, total = parsed
    if start is None:
        assert end is None and total is not None and total >= 0
    else:
        assert end is not None and 0 <= start <= end
        assert total is None or end < total


@FUZZ
@given(
    st.integers(0, 2**64),
    st.integers(0, 2**40),
    st.integers(1, 2**40),
    st.sampled_from(["bytes", "BYTES", "Bytes"]),
    st.sampled_from([" ", "\t", "  "]),
)
def test_content_range_round_trips_in_every_spelling(
    start: int, length: int, slack: int, unit: str, gap: str
) -> None:
    end, total = start + length, start + length + slack
    assert parse_content_range(f" {unit}{gap}{start}-{end}/{total} ") == ContentRange(
        start, end, total
    )
    assert parse_content_range(f"{unit}{gap}*/{total}") == ContentRange(None, None, total)
    assert parse_content_range(f"{unit}{gap}{end}-{start}/{total}") in (
        None,
        ContentRange(start, end, total),  # only when start == end
    )


@FUZZ
@given(st.one_of(soup(*"0123456789-+ .e_", "\u0663"), st.text(max_size=20)))
def test_content_length_is_a_non_negative_int_or_none(text: str) -> None:
    value = parse_content_length(text)
    assert value is None or (isinstance(value, int) and value >= 0)
    if value is not None:
        assert str(value) == text.strip().lstrip("0") or value == 0


# -- Retry-After, RateLimit ----------------------------------------------------------------------

NOW = 1_800_000_000.0


@FUZZ
@given(st.text(max_size=60))
def test_retry_after_is_a_finite_non_negative_delay_or_none(text: str) -> None:
    value = parse_retry_after(text, NOW)
    assert value is None or (math.isfinite(value) and value >= 0)


@FUZZ
@given(st.integers(0, 10 * 365 * 24 * 3600))
def test_retry_after_round_trips_seconds_and_dates(delay: int) -> None:
    assert parse_retry_after(str(delay), NOW) == delay
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=delay)
    for text in (format_datetime(when, usegmt=True), when.strftime("%A, %d-%b-%y %H:%M:%S GMT")):
        parsed = parse_retry_after(text, NOW)
        if parsed is not None:  # the two-digit-year form is obsolete; a parse must be right
            assert abs(parsed - delay) < 1


@FUZZ
# From year 1000: the stdlib reads a year written 00YY as the obsolete two-digit form.
@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30)))
def test_retry_after_dates_far_in_the_past_or_future_never_raise(when: datetime) -> None:
    value = parse_retry_after(format_datetime(when.replace(tzinfo=UTC), usegmt=True), NOW)
    assert value is not None and math.isfinite(value) and value >= 0
    if when.replace(tzinfo=UTC).timestamp() <= NOW:
        assert value == 0


RATELIMIT_PIECES = soup(
    '"api"',
    "api",
    '"',
    ";",
    ",",
    "=",
    " ",
    "r",
    "t",
    "q",
    "w",
    "r=0",
    "t=5",
    "1.5",
    "-1",
    "nan",
    "inf",
    "9" * 30,
    "limit=3",
    "remaining=0",
    "reset=2",
    "*",
    max_size=14,
)


@FUZZ
@given(st.one_of(RATELIMIT_PIECES, st.text(max_size=40)))
def test_ratelimit_never_raises_and_gives_sane_windows(text: str) -> None:
    window = parse_ratelimit(text)
    if window is not None:
        assert window.reset is None or (math.isfinite(window.reset) and window.reset >= 0)
        assert window.remaining is None or window.remaining >= 0
    wait = retry_after_seconds({"RateLimit": text, "RateLimit-Reset": text}, NOW)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True),
            st.integers(0, 1000),
            st.integers(0, 100_000),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_ratelimit_structured_form_round_trips_and_picks_the_binding_window(
    windows: list[tuple[str, int, int]],
) -> None:
    text = ", ".join(f'"{name}";r={r};t={t}' for name, r, t in windows)
    parsed = parse_ratelimit(text)
    assert parsed is not None
    exhausted = [w for w in windows if w[1] == 0]
    if exhausted:
        assert parsed.remaining == 0 and parsed.reset == max(float(w[2]) for w in exhausted)
    else:
        assert parsed.remaining == min(w[1] for w in windows)
    assert (parsed.policy, parsed.remaining, parsed.reset) in {
        (name, r, float(t)) for name, r, t in windows
    }
    assert parse_ratelimit(f'"{windows[0][0]}";r={windows[0][1]};t={windows[0][2]}') == (
        RateLimit(remaining=windows[0][1], reset=float(windows[0][2]), policy=windows[0][0])
    )


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["Retry-After", "retry-after", "RateLimit", "X"]), st.text(max_size=30)
    )
)
def test_retry_after_seconds_never_raises(headers: dict[str, str]) -> None:
    wait = retry_after_seconds(headers, NOW)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


# -- shard names and quantizations ---------------------------------------------------------------

QUANTS = sorted(
    {Quant(name) for _, name in QUANT_PATTERNS} | {Quant(base, ud=True) for base in UD_BASES}
)


@FUZZ
@given(
    st.text(max_size=20),
    st.integers(1, 10**6),
    st.integers(0, 10**6),
    st.integers(1, 7),
    st.sampled_from([".gguf", ".GGUF", ".bin", ".x"]),
)
@example("a\nb", 1, 1, 5, ".gguf")
def test_shard_names_round_trip_through_their_siblings(
    prefix: str, index: int, extra: int, width: int, ext: str
) -> None:
    count = index + extra
    path = f"{prefix}-{index:0{width}d}-of-{count:05d}{ext}"
    shard = parse_shard(path)
    assert shard is not None, path
    assert (shard.index, shard.count, shard.prefix, shard.ext) == (index, count, prefix, ext)
    assert shard.sibling(index) == path
    for other in {1, count, (index % count) + 1}:
        sibling = parse_shard(shard.sibling(other))
        assert sibling is not None
        assert (sibling.index, sibling.count, sibling.base) == (other, count, shard.base)


@FUZZ
@given(st.one_of(soup(*"ab-_./0123456789", "-of-", "00001", "gguf", "\n"), st.text(max_size=40)))
def test_any_path_is_a_consistent_shard_or_none(text: str) -> None:
    shard = parse_shard(text)
    if shard is not None:
        assert 1 <= shard.index <= shard.count
        assert shard.sibling(shard.index) == text


@FUZZ
@given(st.sampled_from(QUANTS), st.booleans(), st.sampled_from(["-", "_"]))
def test_every_quant_token_round_trips(quant: Quant, lower: bool, ud_sep: str) -> None:
    name = quant.name.replace("UD-", f"UD{ud_sep}")
    token = name.lower() if lower else name
    assert parse_quant_token(token) == quant
    assert parse_quant_token(f"  {token} ") == quant
    assert str(quant) == quant.name


@FUZZ
@given(
    st.sampled_from(QUANTS),
    st.from_regex(r"[a-z]{1,8}(?:-[a-z]{1,8}){0,2}", fullmatch=True),
    st.sampled_from(["-", "_", ".", " "]),
    st.sampled_from([".gguf", "-00001-of-00003.gguf", ".GGUF"]),
)
def test_a_quant_in_a_file_name_is_read_back(
    quant: Quant, stem: str, sep: str, suffix: str
) -> None:
    if parse_quant(stem) is not None or stem.endswith("-ud") or stem == "ud":
        return  # the stem names a quant of its own (or a UD marker): a different question
    assert parse_quant(f"{stem}{sep}{quant.name}{suffix}") == quant


@FUZZ
@given(st.text(max_size=40))
def test_quant_parsers_never_raise(text: str) -> None:
    found = parse_quant(text)
    assert found is None or found in QUANTS
    token = parse_quant_token(text)
    assert token is None or token in QUANTS


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m", "dir/m", "mmproj-m", "x"]),
            st.sampled_from(["Q4_K_M", "UD-Q4_K_M", "Q8_0", "F16", ""]),
            st.integers(1, 4),
            st.integers(1, 4),
            st.integers(0, 10**9),
        ),
        max_size=12,
    )
)
def test_grouping_any_listing_is_consistent(
    entries: list[tuple[str, str, int, int, int]],
) -> None:
    listing = []
    for stem, quant, index, count, size in entries:
        name = f"{stem}-{quant}" if quant else stem
        path = f"{name}-{index:05d}-of-{count:05d}.gguf" if index <= count else f"{name}.gguf"
        listing.append((path, size))
    listing = list(dict(listing).items())
    paths = {p for p, _ in listing}
    for group in group_gguf_files(listing):
        assert set(group.paths) <= paths and not set(group.paths) & set(group.extra)
        assert group.complete == (not group.missing)
        assert group.shard_count == len(group.paths)
        assert group.total_size == sum(dict(listing)[p] for p in group.paths)
        assert not any(p.rsplit("/", 1)[-1].lower().startswith("mmproj") for p in group.paths)


# -- paths and names from servers ----------------------------------------------------------------

PATH_PIECES = soup(
    *"ab./\\:",
    "..",
    "\x00",
    "\n",
    " ",
    "é",
    "e\u0301",
    "\u202e",
    "\u2066",
    "CON",
    "nul.txt",
    "x" * 120,
    "\uff0f",
    max_size=10,
)


@FUZZ
@given(st.one_of(PATH_PIECES, st.text(max_size=40)))
@example("a\u202eb")
def test_safe_join_stays_inside_and_refuses_with_unsafe_path_error_only(name: str) -> None:
    base = PurePosixPath("/srv/models")
    try:
        joined = safe_join(base, name)
    except UnsafePathError:
        return
    assert joined.parts[:3] == base.parts and len(joined.parts) > 3
    assert ".." not in joined.parts and "\\" not in str(joined)
    assert not any(0x202A <= ord(ch) <= 0x202E or 0x2066 <= ord(ch) <= 0x2069 for ch in name)
    assert unicodedata.is_normalized("NFC", str(joined))
    # The same name in another normal form is the same file.
    assert safe_join(base, unicodedata.normalize("NFD", name)) == joined


@FUZZ
@given(st.one_of(PATH_PIECES, st.text(max_size=40)))
def test_a_sanitized_file_name_is_safe_and_stable(name: str) -> None:
    clean = sanitize_filename(name)
    assert str(safe_relpath(clean)) == clean
    assert sanitize_filename(clean) == clean


@FUZZ
@given(
    st.one_of(
        soup(
            ";",
            "=",
            '"',
            "\\",
            "'",
            "filename",
            "filename*",
            "UTF-8",
            "%2e",
            "..",
            "/",
            "attachment",
            " ",
        ),
        st.text(max_size=40),
    )
)
def test_content_disposition_never_raises(value: str) -> None:
    name = content_disposition_filename(value)
    assert name is None or isinstance(name, str)
    if name is not None:
        assert str(safe_relpath(sanitize_filename(name)))


@FUZZ
@given(st.one_of(soup(*"0123456789.- ", "12", "3"), st.text(max_size=12)))
@example("12121212120000121212")  # past MAX_ID: CI's run found it
@example("1.99999999999999999999")
def test_item_refs_round_trip_or_are_spec_errors(text: str) -> None:
    try:
        ref = ItemRef.parse(text)
    except SpecError:
        return
    except UnknownItemError:  # well formed, but past any id a store can hand out
        head, _, tail = text.strip().partition(".")
        assert int(head) > MAX_ID or (tail != "" and int(tail) > MAX_ID)
        return
    assert ItemRef.parse(str(ref)) == ref and ref.group_id >= 1


@FUZZ
@given(
    st.one_of(
        soup("http", "https", "://", "[", "]", ":", "::1", "80", "host", "/", "@", "%"),
        st.text(max_size=30),
    )
)
def test_origin_of_raises_only_value_error(url: str) -> None:
    try:
        origin = origin_of(url)
    except ValueError:
        return
    assert origin == origin_of(origin)


# -- the wire client's response parser (llhttp with our limits) ------------------------------------

_HEAD_LINES = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from(
            [
                b"Content-Length: 5",
                b"Content-Length: -1",
                b"Transfer-Encoding: chunked",
                b"Connection: close",
                b"X-A:\x00",
                b" folded",
                b"Bad Name: v",
            ]
        ),
    ),
    max_size=8,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.one_of(
        st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 206 Partial", b"HTTP/1.1 101 Up"]),
        st.binary(max_size=40),
    ),
    lines=_HEAD_LINES,
)
def test_any_head_parses_or_is_a_protocol_error(status: bytes, lines: list[bytes]) -> None:
    from modelfetch.transfer.wire import ProtocolError
    from modelfetch.transfer.wire.parse import ResponseParser

    block = b"\r\n".join([status, *lines]) + b"\r\n\r\n"
    try:
        code, _reason, version, headers = ResponseParser().head(block)
    except ProtocolError:
        return
    assert 100 <= code <= 999 and version in ("HTTP/1.0", "HTTP/1.1")
    assert len(headers) <= len(lines)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.binary(max_size=300), max_size=6))
def test_any_chunked_body_decodes_or_is_a_protocol_error(pieces: list[bytes]) -> None:
    from modelfetch.transfer.wire import ProtocolError
    from modelfetch.transfer.wire.parse import Chunked, ResponseParser

    parser = ResponseParser()
    parser.head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    got = bytearray()

    def deliver(view: memoryview) -> bool:
        got.extend(view)
        return True

    try:
        for piece in pieces:
            outcome = parser.chunked(memoryview(piece), deliver)
            if outcome is not Chunked.MORE:
                break
    except ProtocolError:
        return
    assert len(got) <= sum(map(len, pieces))


@settings(max_examples=200)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_a_chunked_body_cut_anywhere_decodes_to_its_payload(
    chunks: list[bytes], cuts: list[int]
) -> None:
    from modelfetch.transfer.wire.parse import Chunked, ResponseParser

    wire = b"".join(b"%x;e=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-T: 1\r\n\r\n"
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    parser = ResponseParser()
    parser.head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    got = bytearray()

    def deliver(view: memoryview) -> bool:
        got.extend(view)
        return True

    outcomes = [
        parser.chunked(memoryview(wire[a:b]), deliver) for a, b in itertools.pairwise(bounds)
    ]
    assert outcomes[-1] is Chunked.DONE
    assert all(o is Chunked.MORE for o in outcomes[:-1])
    assert bytes(got) == b"".join(chunks)
