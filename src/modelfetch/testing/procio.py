"""How many bytes a process has written so far, for the kill -9 tests and benchmark.

They kill a child at a point of the download chosen by its own write count (`wchar` in
/proc/PID/io: pwrite included, the same trigger for every tool), not by a clock.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bytes_written"]


def bytes_written(pid: int) -> int:
    """`wchar` of /proc/PID/io; 0 once the process is gone (or where there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0
