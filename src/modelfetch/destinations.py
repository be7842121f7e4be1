"""Whether the folders a download will write to can be written, checked before it is queued.

A destination that is not a directory, cannot be created (a file in the way, a read-only file
system, no permission) or sits on a disk without room for what is left to fetch is refused
with a `DestinationError` naming the path and the cause: the user's to fix (exit status 2),
found before anything is queued rather than as a failed transfer later. Nothing is created
here: a check that made folders would leave them behind for a request that is then refused.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelfetch.core.errors import DestinationError
from modelfetch.core.format import format_bytes
from modelfetch.core.messages import describe_file_error

__all__ = ["Needed", "check_destinations"]


@dataclass(frozen=True, slots=True)
class Needed:
    """One file to be written at `dest`, with `remaining` bytes still to fetch (0: unknown)."""

    dest: Path
    remaining: int = 0


def check_destinations(files: Iterable[Needed]) -> None:
    """DestinationError for the first destination folder that cannot be used, else None.
    Free space is summed per file system (the files of one download may share one)."""
    needed_by_device: dict[int, tuple[Path, int]] = {}
    checked: dict[Path, Path] = {}
    for item in files:
        folder = item.dest.parent
        anchor = checked.get(folder)
        if anchor is None:
            anchor = checked[folder] = _check_folder(folder)
        try:
            device = os.stat(anchor).st_dev
        except OSError:
            continue
        where, total = needed_by_device.get(device, (anchor, 0))
        needed_by_device[device] = (where, total + max(0, item.remaining))
    for where, total in needed_by_device.values():
        _check_space(where, total)


def _check_folder(folder: Path) -> Path:
    """The nearest existing folder of `folder` (itself when it exists), checked to be a
    directory this process may create entries in."""
    current = folder
    while True:
        try:
            is_dir = current.is_dir()
            exists = is_dir or current.exists() or current.is_symlink()
        except OSError as exc:
            raise _refused(current, exc.errno, exc.strerror or str(exc)) from None
        if is_dir:
            break
        if exists:  # a file (or a dangling link) where a folder must be
            raise _not_a_folder(folder, current)
        if current.parent == current:
            break
        current = current.parent
    if not os.access(current, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(current) else errno.EACCES
        raise _refused(folder if folder == current else current, code, os.strerror(code))
    if _read_only(current):  # root passes access(2) on some read-only mounts; the mount does not
        raise _refused(current, errno.EROFS, os.strerror(errno.EROFS))
    return current


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _check_space(where: Path, needed: int) -> None:
    if needed <= 0:
        return
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if free < needed:
        raise DestinationError(
            f"Not enough space on {where}: this download needs {format_bytes(needed)}, "
            f"{format_bytes(free)} is free; free some space or choose another folder (--dir)",
            path=str(where),
            cause="no space left on device",
        )


def _refused(path: Path, code: int | None, cause: str) -> DestinationError:
    return DestinationError(describe_file_error(path, code, cause), path=str(path), cause=cause)


def _not_a_folder(folder: Path, blocker: Path) -> DestinationError:
    if blocker == folder:
        line = f"Cannot write to {folder}: it is a file, not a folder; choose another (--dir)"
    else:
        line = (
            f"Cannot create {folder}: {blocker} is a file, not a folder; move it or choose "
            "another folder (--dir)"
        )
    return DestinationError(line, path=str(blocker), cause=os.strerror(errno.ENOTDIR))
