"""A benchmark's helper process: started, told to stop, and its one-line JSON report read.

The load benchmarks run their clients (the SSE dashboards, the API poller) in processes of their
own, as a browser is: the daemon's RSS is then the daemon's alone, and a client's wait is not
also the wait for the daemon's own busy loop. Each such script prints `ready` once it runs,
works until SIGTERM, then prints its report as its last line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any


async def start(script: str, *args: str) -> asyncio.subprocess.Process:
    """`script args...` in a process of its own, once it says it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    await proc.stdout.readline()  # "ready"
    return proc


async def finish(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """Stop a process `start` started; its report (the JSON of its last line)."""
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    report: dict[str, Any] = json.loads(
        (await proc.stdout.read()).decode().strip().splitlines()[-1]
    )
    await proc.wait()
    return report


def until_sigterm() -> asyncio.Event:
    """An event set by SIGTERM (for the helper scripts' main loops)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop
