"""The state directory's exclusive lock: an flock on `home/manager.lock` holding the owner's pid.

flock locks belong to the open file description, so a second open of the same file fails even
inside this process; the kernel drops the lock when the process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from modelfetch.core.errors import StateError, StateLockedError
from modelfetch.store.schema import LOCK_NAME

__all__ = ["lock_state_dir", "open_lock_file", "take_lock", "unlock"]


def open_lock_file(home: Path) -> int:
    """The lock file of `home`, opened (created if need be); not locked yet."""
    path = home / LOCK_NAME
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateError(f"cannot open the lock file {path}: {exc}") from exc


def take_lock(fd: int, home: Path) -> None:
    """Lock the open lock file `fd` of `home` without waiting. Another holder is a
    `StateLockedError` naming the pid it wrote; `fd` stays open either way."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        pid = holder if holder.isdigit() else "unknown"
        raise StateLockedError(f"another modelfetch process (pid {pid}) is using {home}") from None
    except OSError as exc:
        raise StateError(f"cannot lock {home / LOCK_NAME}: {exc}") from exc


def lock_state_dir(home: Path) -> int:
    """Take the exclusive lock of a state directory and write our pid into it; returns the
    descriptor that holds it (give it to `unlock`)."""
    fd = open_lock_file(home)
    try:
        take_lock(fd, home)
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken by `lock_state_dir` and close its descriptor."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
