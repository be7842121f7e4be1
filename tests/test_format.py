from __future__ import annotations

import math

import pytest

from modelfetch.core.format import (
    UNKNOWN,
    format_bytes,
    format_duration,
    format_rate,
    parse_size,
)


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -1.0])
def test_unknown_rate_renders_a_placeholder(value: float | None) -> None:
    assert format_rate(value) == UNKNOWN == "—"


@pytest.mark.parametrize(
    ("bps", "text"),
    [
        (0.0, "0 B/s"),
        (999.0, "999 B/s"),
        (1_000.0, "1 kB/s"),
        (1_500_000.0, "1.5 MB/s"),
        (118_400_000.0, "118.4 MB/s"),
        (2_500_000_000.0, "2.50 GB/s"),
    ],
)
def test_rates_use_decimal_units(bps: float, text: str) -> None:
    assert format_rate(bps) == text


def test_a_megabyte_per_second_is_a_million_bytes() -> None:
    assert format_rate(1_048_576.0) == "1.0 MB/s"
    assert format_rate(1_000_000.0) == "1.0 MB/s"


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -5.0])
def test_unknown_duration_renders_a_placeholder(value: float | None) -> None:
    assert format_duration(value) == UNKNOWN


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "1s"),
        (0.2, "1s"),
        (45.0, "45s"),
        (59.4, "1m 00s"),
        (200.0, "3m 20s"),
        (3_599.5, "1h 00m"),
        (3_600.0, "1h 00m"),
        (3_845.0, "1h 04m"),
    ],
)
def test_durations_scale_by_magnitude(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_absurd_durations_saturate_instead_of_wrapping() -> None:
    assert format_duration(1e18) == "99h 59m"
    assert format_duration(359_999.0) == "99h 59m"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "—"),
        (-1, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024**2 - 1, "1.0 MiB"),  # rounds up a unit rather than printing 1024.0 KiB
        (int(1.5 * 1024**3), "1.5 GiB"),
        (4 * 1024**4, "4.0 TiB"),
        (2 * 1024**6, "2.0 EiB"),
        (5000 * 1024**6, "5000.0 EiB"),
    ],
)
def test_sizes_use_binary_units(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100", 100),
        ("0", 0),
        ("100B", 100),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("20M", 20 * 1024**2),
        ("20m", 20 * 1024**2),
        ("20MiB", 20 * 1024**2),
        ("20 mib", 20 * 1024**2),
        ("1.5G", 3 * 1024**3 // 2),
        ("2T", 2 * 1024**4),
        ("20MB", 20_000_000),
        ("20kB", 20_000),
        ("1GB", 1_000_000_000),
        ("1TB", 10**12),
        (" 20M/s ", 20 * 1024**2),
        ("0.5k", 512),
        (".5k", 512),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "  ", "abc", "-1", "20X", "20 M B", "1e3", "M", "1.2.3", "20MB/h", "inf"]
)
def test_parse_size_rejects_garbage_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size: .*e\.g\. 100, 512k, 20M"):
        parse_size(text)


def test_parse_size_explains_a_bare_ib() -> None:
    with pytest.raises(ValueError, match="needs a prefix"):
        parse_size("20iB")


def test_parse_size_rejects_a_number_too_large_for_a_float() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_size("9" * 400 + "T")
