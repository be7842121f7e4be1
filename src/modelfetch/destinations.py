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

__all__ = ["FolderChecks", "Needed", "check_destinations"]


@dataclass(frozen=True, slots=True)
class Needed:
    """One file to be written at `dest`, with `remaining` bytes still to fetch (0: unknown)."""

    dest: Path
    remaining: int = 0


class FolderChecks:
    """What the checks of one batch of downloads learned about their folders: each folder is
    looked at once, and each file system's free space read once and then handed out, download
    by download, so that a list of 200 small files costs 200 checks of arithmetic rather than
    1,000 system calls on the event loop, and a list that does not fit as a whole is refused
    from the first download that does not fit (each alone would pass)."""

    __slots__ = ("_anchors", "_devices", "_left")

    def __init__(self) -> None:
        self._anchors: dict[Path, Path] = {}  # folder -> its nearest existing folder, checked
        self._devices: dict[Path, int | None] = {}  # anchor -> its st_dev (None: unreadable)
        self._left: dict[int, int] = {}  # device -> free bytes not handed out yet (once read)

    def anchor(self, folder: Path) -> Path:
        anchor = self._anchors.get(folder)
        if anchor is None:
            anchor = self._anchors[folder] = _check_folder(folder)
        return anchor

    def device(self, anchor: Path) -> int | None:
        if anchor not in self._devices:
            try:
                self._devices[anchor] = os.stat(anchor).st_dev
            except OSError:
                self._devices[anchor] = None
        return self._devices[anchor]

    def claim(self, device: int, where: Path, needed: int) -> None:
        """DestinationError unless `needed` more bytes fit on `device` (at `where`) after what
        this batch was handed before; else they are handed out."""
        if needed <= 0:
            return
        left = self._left.get(device)
        if left is None:
            try:
                left = shutil.disk_usage(where).free
            except OSError:
                return
        first = device not in self._left
        if left < needed:
            raise DestinationError(
                f"Not enough space on {where}: this download needs {format_bytes(needed)}, "
                f"{format_bytes(left)} is free"
                + ("" if first else " after the downloads queued before it")
                + "; free some space or choose another folder (--dir)",
                path=str(where),
                cause="no space left on device",
            )
        self._left[device] = left - needed


def check_destinations(files: Iterable[Needed], checks: FolderChecks | None = None) -> None:
    """DestinationError for the first destination folder that cannot be used, else None.
    Free space is summed per file system (the files of one download may share one) and, given
    the `checks` of a batch, counted after what the batch's earlier downloads need."""
    if checks is None:
        checks = FolderChecks()
    needed_by_device: dict[int, tuple[Path, int]] = {}
    for item in files:
        anchor = checks.anchor(item.dest.parent)
        device = checks.device(anchor)
        if device is None:
            continue
        where, total = needed_by_device.get(device, (anchor, 0))
        needed_by_device[device] = (where, total + max(0, item.remaining))
    for device, (where, total) in needed_by_device.items():
        checks.claim(device, where, total)


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
