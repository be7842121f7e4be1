"""Where case 3's time goes through the daemon: a timeline of `modelfetch get -I list`, from the
daemon's own events, beside `aria2c -j16 -i list` in the same rounds.

    python benchmarks/case3_timeline.py [--rounds 7]

Each round runs both tools in turn (in alternating order, `sync` and a pause before each, as
bench_transfer.py does) on the 200 files of 256 KiB from nginx on loopback, against one
`modelfetch serve` started before the rounds. The daemon's events carry the wall-clock time
they were published at, so after each run the events of that run are read back
(`GET /api/events?since=`, the replay every client has) and placed on the run's clock, whose
zero is the spawn of `get`: when the first and the last download were recorded
(`group_queued`), started (`file_started`) and completed (`file_completed`), and when the
command exited. Also per run: the CPU time of the daemon (every thread), of the `get`
process, of aria2c and of the whole machine (2 cores here: nginx and the kernel included).
Nothing in modelfetch is instrumented for this; it is what a dashboard sees.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import BENCH_DIR, OUT_DIR, aria2, clean, running_nginx, small_files
from bench_transfer import _forget_finished, small_daemon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from modelfetch.remote_light import DaemonClient  # noqa: E402 -- after the path is set

MARKS = (
    ("first group_queued", "group_queued", min),
    ("first file_started", "file_started", min),
    ("last group_queued", "group_queued", max),
    ("last file_started", "file_started", max),
    ("last file_completed", "file_completed", max),
)


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    """CPU seconds spent by every process (both cores, nginx and the kernel included)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _events_since(client: DaemonClient, since: int, expected: int) -> list[dict[str, object]]:
    """The events published after `since`, replayed, until `expected` group_finished are in (or
    half a second passes without one)."""
    reader = client.open_events(since)
    found: list[dict[str, object]] = []
    finished = 0
    try:
        while finished < expected:
            message = reader.next(timeout=0.5)
            if message is None:
                break
            data = json.loads(message.data)
            found.append(data)
            finished += data.get("type") == "group_finished"
    finally:
        reader.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    files = small_files()
    out = OUT_DIR / "timeline"
    url_list = OUT_DIR / "timeline-list.txt"
    rows: dict[str, list[float]] = {}
    with running_nginx(BENCH_DIR) as servers, small_daemon() as daemon:
        url_list.parent.mkdir(parents=True, exist_ok=True)
        url_list.write_text("".join(f"{servers.plain}/{name}\n" for name, _ in files))
        info = json.loads((daemon.home / "daemon.json").read_text())
        client = DaemonClient(daemon.url, token=info.get("token"))
        pid = int(info["pid"])
        get = [sys.executable, "-m", "modelfetch", "--home", str(daemon.home), "get"]
        get += ["--dir", str(out), "--jobs", "16", "--input-file", str(url_list)]
        aria = aria2("-j16", "-d", str(out), "-i", str(url_list))
        for number in range(args.rounds):
            order = ["modelfetch", "aria2c"] if number % 2 == 0 else ["modelfetch", "aria2c"][::-1]
            for tool in order:
                if tool == "modelfetch":
                    _forget_finished(daemon)
                clean(out)
                since = int(client.call("GET", "/api/downloads?limit=1")["seq"])
                daemon_cpu, child_cpu = _cpu_of(pid), _children_cpu()
                argv = get if tool == "modelfetch" else aria
                machine = _machine_cpu()
                spawned = time.time()
                began = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                exited = time.perf_counter() - began
                child = _children_cpu() - child_cpu
                busy = _machine_cpu() - machine
                daemon_used = _cpu_of(pid) - daemon_cpu
                if len(list(out.iterdir())) != len(files):
                    raise SystemExit(f"{tool} did not leave every file")
                if tool == "aria2c":
                    rows.setdefault("aria2c: exit", []).append(exited)
                    rows.setdefault("aria2c: CPU ms", []).append(child)
                    rows.setdefault("aria2c: CPU ms of the machine", []).append(busy)
                    continue
                events = _events_since(client, since, len(files))
                for label, kind, pick in MARKS:
                    times = [float(e["ts"]) for e in events if e.get("type") == kind]
                    if times:
                        rows.setdefault(label, []).append(pick(times) - spawned)
                rows.setdefault("get: exit", []).append(exited)
                rows.setdefault("get: CPU ms of the get process", []).append(child)
                rows.setdefault("get: CPU ms of the daemon", []).append(daemon_used)
                rows.setdefault("get: CPU ms of the machine", []).append(busy)
            print(
                f"round {number + 1}: get {rows['get: exit'][-1]:.3f} s, aria2c "
                f"{rows['aria2c: exit'][-1]:.3f} s",
                flush=True,
            )
    print()
    print(f"| `get -I list` via daemon, {len(files)} x 256 KiB | median ms [min-max] |")
    print("|---|---|")
    for label, values in sorted(rows.items(), key=lambda row: row[0].startswith("aria2c")):
        cells = [v * 1000 for v in values]
        print(f"| {label} | {statistics.median(cells):.0f} [{min(cells):.0f}-{max(cells):.0f}] |")
    ratio = statistics.median(rows["aria2c: exit"]) / statistics.median(rows["get: exit"])
    print(f"\nspeed of `get` via daemon / aria2c: {ratio:.2f}x ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
