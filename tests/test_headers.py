"""core/headers.py: the pure parsers a transfer trusts."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfetch.core.headers import (
    ContentRange,
    RateLimit,
    content_disposition_filename,
    is_strong_etag,
    linked_digest,
    origin_of,
    parse_content_length,
    parse_content_range,
    parse_ratelimit,
    parse_retry_after,
    retry_after_seconds,
    total_size,
    unwrap_etag,
)

SHA = "a" * 32 + "0123456789abcdef" * 2
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 100-199/500", ContentRange(100, 199, 500)),
        ("bytes 0-0/1", ContentRange(0, 0, 1)),
        ("Bytes 5-9/*", ContentRange(5, 9, None)),
        ("  bytes 0-9/10 ", ContentRange(0, 9, 10)),
        ("bytes */500", ContentRange(None, None, 500)),
        ("bytes */0", ContentRange(None, None, 0)),
        ("bytes 200-100/500", None),  # end before start
        ("bytes 0-500/500", None),  # end past the total
        ("bytes */*", None),
        ("bytes 1-2", None),
        ("items 0-9/10", None),
        ("bytes -1-9/10", None),
        ("bytes 0-9/ten", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


@given(st.integers(0, 2**63), st.integers(0, 2**40), st.integers(1, 2**40))
def test_content_range_round_trips(start: int, length: int, slack: int) -> None:
    end = start + length
    total = end + slack
    assert parse_content_range(f"bytes {start}-{end}/{total}") == (start, end, total)
    assert parse_content_range(f"bytes {start}-{end}/*") == (start, end, None)


@given(st.text())
def test_content_range_never_raises_and_is_consistent(text: str) -> None:
    parsed = parse_content_range(text)
    if parsed is None:
        return
    if parsed.start is None:
        assert parsed.end is None and parsed.total is not None
    else:
        assert parsed.end is not None and 0 <= parsed.start <= parsed.end
        assert parsed.total is None or parsed.end < parsed.total


@pytest.mark.parametrize(
    ("status", "content_range", "content_length", "offset", "expected"),
    [
        (206, "bytes 100-199/500", "400", 100, 500),  # Content-Range wins
        (206, None, "400", 100, 500),  # Content-Length plus the offset
        (206, "bytes 100-199/*", "100", 100, None),  # an unknown total is not invented
        (200, None, "500", 0, 500),
        (200, None, None, 0, None),
        (200, None, "lots", 0, None),
    ],
)
def test_total_size(
    status: int,
    content_range: str | None,
    content_length: str | None,
    offset: int,
    expected: int | None,
) -> None:
    assert (
        total_size(
            status=status, content_range=content_range, content_length=content_length, offset=offset
        )
        == expected
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("123", 123), (" 0 ", 0), ("-1", None), ("1e3", None), ("١٢", None)]
)
def test_parse_content_length(value: str, expected: int | None) -> None:
    assert parse_content_length(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', "abc"),
        ('W/"abc"', "abc"),
        ("abc", "abc"),
        ('  W/ "abc" ', "abc"),
        ('""', None),
        ("", None),
        (None, None),
    ],
)
def test_unwrap_etag(value: str | None, expected: str | None) -> None:
    assert unwrap_etag(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f'"{SHA}"', SHA),
        (f'W/"{SHA}"', SHA),  # a weak validator on the linked etag is unwrapped
        (SHA.upper(), SHA),
        (SHA, SHA),
        ('"abc123"', None),  # short
        ('"' + "z" * 64 + '"', None),  # not hex
        ('"' + "a" * 65 + '"', None),
        ('W/"xyz"', None),
        ("", None),
        (None, None),  # absent
    ],
)
def test_linked_digest(value: str | None, expected: str | None) -> None:
    assert linked_digest(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"abc"', True), ('W/"abc"', False), ("abc", False), ('""', False), ('"a"b"', False)],
)
def test_is_strong_etag(value: str, expected: bool) -> None:
    assert is_strong_etag(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # long past
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("limit=10, remaining=0, reset=5", RateLimit(remaining=0, reset=5.0, limit=10)),
        ("remaining=3", RateLimit(remaining=3, reset=None, limit=None)),
        ('"default";r=0;t=5', RateLimit(remaining=0, reset=5.0, policy="default")),
        ("api;r=10;t=60", RateLimit(remaining=10, reset=60.0, policy="api")),
        (
            '"burst";r=5;t=1, "daily";r=0;t=3600, "hourly";r=0;t=60',
            RateLimit(remaining=0, reset=3600.0, policy="daily"),
        ),
        ('"a";r=9;t=1, "b";r=2;t=30', RateLimit(remaining=2, reset=30.0, policy="b")),
        ("limit=ten", None),
        ("garbage", None),
        ('"x";q', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ratelimit(value: str | None, expected: RateLimit | None) -> None:
    assert parse_ratelimit(value) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "7"}, 7.0),  # a plain dict, any case
        ({"Retry-After": "7", "RateLimit": '"x";r=0;t=99'}, 7.0),  # Retry-After wins
        ({"RateLimit": '"x";r=0;t=42'}, 42.0),
        ({"RateLimit": "limit=10, remaining=0, reset=5"}, 5.0),
        ({"RateLimit": '"x";r=3;t=42'}, None),  # not exhausted: no reason to wait
        ({"RateLimit-Reset": "12"}, 12.0),
        ({"Retry-After": "junk", "RateLimit-Reset": "12"}, 12.0),
        ({"RateLimit-Reset": "junk"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://huggingface.co", "https://huggingface.co:443"),
        ("https://HuggingFace.CO:443/x/y?z", "https://huggingface.co:443"),
        ("http://127.0.0.1:8123/a", "http://127.0.0.1:8123"),
        ("HTTP://Example.com", "http://example.com:80"),
        ("http://user:pw@host:81/", "http://host:81"),
        ("http://[::1]:9000/p", "http://[::1]:9000"),
        ("https://hf.co./", "https://hf.co:443"),
    ],
)
def test_origin_of(url: str, expected: str) -> None:
    assert origin_of(url) == expected


def test_origins_differ_by_scheme_and_port() -> None:
    assert origin_of("http://h") != origin_of("https://h")
    assert origin_of("http://h:8080") != origin_of("http://h:8081")
    assert origin_of("http://h:80") == origin_of("http://h")


@pytest.mark.parametrize("url", ["/relative/path", "no scheme", "http://", "http://h:99999/"])
def test_origin_of_rejects_what_has_no_origin(url: str) -> None:
    with pytest.raises(ValueError):
        origin_of(url)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('attachment; filename="model.gguf"', "model.gguf"),
        ("attachment; filename=model.gguf", "model.gguf"),
        ("attachment; filename*=UTF-8''mod%C3%A8le.gguf; filename=\"x\"", "modèle.gguf"),
        ('attachment; filename="a;b.bin"', "a;b.bin"),
        ('attachment; filename="say \\"hi\\".txt"', 'say "hi".txt'),
        ("inline", None),
        (None, None),
    ],
)
def test_content_disposition_filename(value: str | None, expected: str | None) -> None:
    assert content_disposition_filename(value) == expected
