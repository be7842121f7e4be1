"""The free-space check before a body (transfer/space.py): it looks at the disk once per
`FRESH` seconds per folder, grants from that reading less what it granted since, and only
a fresh look refuses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from modelfetch.core.errors import DiskFullError, IntegrityError
from modelfetch.transfer import space


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


class FakeDisk:
    """shutil.disk_usage with a free figure the test sets, counting the looks."""

    def __init__(self, free: int, total: int = 1 << 40) -> None:
        self.free = free
        self.total = total
        self.looks = 0

    def __call__(self, path: str | os.PathLike[str]) -> Any:
        assert Path(path).is_dir()  # the folder of the file, a real one
        self.looks += 1
        return _Usage(self.total, self.total - self.free, self.free)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    fake = FakeDisk(free=10_000)
    monkeypatch.setattr(shutil, "disk_usage", fake)
    return fake


def test_one_look_answers_the_checks_it_can_grant(disk: FakeDisk, tmp_path: Path) -> None:
    for i in range(5):
        space.require_space(tmp_path / f"f{i}.part", 2_000)
    assert disk.looks == 1  # 5 x 2,000 of the 10,000 the look saw


def test_a_check_the_reading_cannot_grant_looks_again(disk: FakeDisk, tmp_path: Path) -> None:
    space.require_space(tmp_path / "a.part", 6_000)
    disk.free = 8_000  # someone freed space meanwhile: the remembered 4,000 would refuse
    space.require_space(tmp_path / "b.part", 6_000)
    assert disk.looks == 2


def test_only_a_fresh_look_refuses(disk: FakeDisk, tmp_path: Path) -> None:
    space.require_space(tmp_path / "a.part", 6_000)
    disk.free = 3_000
    with pytest.raises(DiskFullError) as info:
        space.require_space(tmp_path / "b.part", 6_000)
    assert disk.looks == 2
    assert info.value.needed == 6_000 and info.value.free == 3_000  # the fresh figure


def test_a_reading_grows_stale(
    disk: FakeDisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space.require_space(tmp_path / "a.part", 1)
    monkeypatch.setattr(space, "FRESH", 0.0)
    space.require_space(tmp_path / "b.part", 1)
    assert disk.looks == 2


def test_each_folder_has_its_own_reading(disk: FakeDisk, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    space.require_space(tmp_path / "x" / "a.part", 1)
    space.require_space(tmp_path / "y" / "a.part", 1)
    assert disk.looks == 2


def test_more_than_the_whole_disk_is_a_lying_size(disk: FakeDisk, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="more than the whole disk"):
        space.require_space(tmp_path / "a.part", disk.total + 1)


def test_the_real_disk_is_read(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    space.require_space(tmp_path / "a.part", 1)
    with pytest.raises(DiskFullError) as info:  # more than it has free, less than it holds
        space.require_space(tmp_path / "b.part", usage.free + (usage.total - usage.free) // 2)
    assert info.value.free is not None and abs(info.value.free - usage.free) < 1 << 30
