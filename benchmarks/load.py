"""Load: a queue of 10,000 items and 50 event subscribers, while a download runs.

    python benchmarks/load.py [--items 10000] [--subscribers 50] [--size-mib 512]
                              [--http] [--markdown FILE]

What it measures (one process: the manager, its subscribers and the pollers share one event
loop, as in the daemon; the files come from nginx on loopback, or from a small aiohttp static
server when nginx is missing):

1. baseline: a 2-file download (`--size-mib` each, SHA-256 verified) with an empty queue;
2. enqueue: `--items` one-file downloads enqueued one by one (a manager with `workers=False`,
   i.e. `modelfetch add` without a daemon) while `--subscribers` subscriptions drain the bus;
3. loaded: a manager started on that queue (start time), the same 2-file download enqueued at a
   higher priority, and while it runs: `snapshot()` every 0.5 s (a dashboard), `group_view`,
   pause+resume and move-to-front of queued items, and the subscribers counting events, `Missed`
   and delivery lag; the download's throughput is compared with the baseline;
4. `--http` (when `modelfetch.server` is importable): the same over the daemon's HTTP API, its
   clients in processes of their own as browsers are: a dashboard polling the first page of
   `GET /api/downloads` and `GET /api/downloads/{id}` every 0.2 s (api_poller.py), and the
   subscribers as SSE clients (sse_clients.py); the download runs again until the poller has
   had `--http-seconds`.

Peak RSS is sampled every 50 ms (/proc/self/statm) and read from getrusage at the end. Latencies
are wall-clock on a shared 2-CPU machine: read the medians and p99 as orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import reporter
import sse_clients
from bench_common import _write_random, stop, wait_listening

from modelfetch.core import events as ev
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.requests import FileRequest, GroupRequest

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
MiB = 1 << 20
KiB = 1 << 10
TINY = 1 * KiB
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    def pct(self, q: float) -> float:
        ordered = sorted(self.values)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def ms(self) -> str:
        if not self.values:
            return "n/a"
        p50, p99 = self.pct(0.5) * 1e3, self.pct(0.99) * 1e3
        return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (n={len(self.values)})"


async def timed(samples: Samples, work: Awaitable[Any]) -> Any:
    began = time.perf_counter()
    try:
        return await work
    finally:
        samples.add(time.perf_counter() - began)


class RssSampler:
    """Resident set size of this process, sampled every 50 ms; `mark()` records a named value."""

    def __init__(self) -> None:
        self.peak = 0
        self.marks: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE

    def mark(self, name: str) -> None:
        self.marks[name] = self.now()

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class SubscriberStats:
    events: int = 0
    missed: int = 0
    lag: Samples = field(default_factory=Samples)


async def drain(subscription: AsyncIterator[ev.Event], stats: SubscriberStats) -> None:
    """A subscriber that keeps up as well as the loop lets it (like an SSE writer)."""
    async for event in subscription:
        stats.events += 1
        if isinstance(event, ev.Missed):
            stats.missed += event.count
        elif event.ts:
            stats.lag.add(max(0.0, time.time() - event.ts))


def summarize(stats: list[SubscriberStats]) -> str:
    lag = Samples([v for s in stats for v in s.lag.values])
    events = statistics.median(s.events for s in stats) if stats else 0
    missed = sum(s.missed for s in stats)
    return f"{events:.0f} events each (median), {missed} missed in total, lag {lag.ms()}"


# -- the file server -------------------------------------------------------------------------

_STATIC_SERVER = """
import sys
from aiohttp import web
app = web.Application()
app.router.add_static("/", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[tuple[str, str]]:
    """(base URL, what serves it): nginx when installed, else an aiohttp static server."""
    port = free_port()
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    with tempfile.TemporaryDirectory(prefix="load-server-") as scratch:
        if binary:
            user = "user root root;" if os.geteuid() == 0 else ""
            temps = "\n".join(
                f"  {k}_temp_path {scratch}/{k};"
                for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            conf = Path(scratch) / "nginx.conf"
            conf.write_text(
                f"{user}\nworker_processes 1;\ndaemon off;\npid {scratch}/nginx.pid;\n"
                f"error_log {scratch}/error.log warn;\nevents {{ worker_connections 512; }}\n"
                f"http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 100000;\n"
                f"  default_type application/octet-stream;\n{temps}\n"
                f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n"
            )
            command = [binary, "-p", scratch, "-c", str(conf)]
            kind = "nginx"
        else:
            command = [sys.executable, "-c", _STATIC_SERVER, str(root), str(port)]
            kind = "aiohttp static server"
        proc = subprocess.Popen(command)
        try:
            wait_listening(proc, port, kind, seconds=15)
            yield f"http://127.0.0.1:{port}", kind
        finally:
            stop(proc)


def source_files(size: int) -> tuple[Path, str]:
    """BENCH_DIR/load-<size>.bin (random, made once) and tiny.bin; the big one's SHA-256."""
    BENCH_DIR.mkdir(exist_ok=True)
    big = BENCH_DIR / f"load-{size >> 20}m.bin"
    if not big.exists() or big.stat().st_size != size:
        _write_random(big, size)
    tiny = BENCH_DIR / "tiny.bin"
    if not tiny.exists():
        tiny.write_bytes(os.urandom(TINY))
    digest = hashlib.sha256()
    with open(big, "rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return big, digest.hexdigest()


# -- the scenario ----------------------------------------------------------------------------


@dataclass
class Results:
    items: int
    subscribers: int
    size: int
    server: str = ""
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.rows.append((what, value))
        print(f"  {what}: {value}", flush=True)

    def table(self) -> str:
        width = max(len(w) for w, _ in self.rows)
        lines = [f"{'measure'.ljust(width)} | value", f"{'-' * width}-|-{'-' * 40}"]
        lines += [f"{w.ljust(width)} | {v}" for w, v in self.rows]
        return "\n".join(lines)

    def markdown(self) -> str:
        head = (
            f"Load benchmark: {self.items} queued items, {self.subscribers} subscribers, "
            f"2 x {self.size >> 20} MiB from {self.server}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}.\n\n| measure | value |\n|---|---|\n"
        )
        return head + "\n".join(f"| {w} | {v} |" for w, v in self.rows) + "\n"


def big_group(base: str, dest: Path, size: int, sha: str, name: str, tag: str) -> GroupRequest:
    files = tuple(
        FileRequest(
            url=f"{base}/{name}?copy={tag}{i}", path=f"big-{tag}{i}.bin", size=size, sha256=sha
        )
        for i in (1, 2)
    )
    return GroupRequest(name=f"big-{tag}", files=files, dest_dir=dest, priority=10)


def tiny_group(base: str, dest: Path, i: int) -> GroupRequest:
    return GroupRequest(
        name=f"item-{i}",
        files=(FileRequest(url=f"{base}/tiny.bin?i={i}", path=f"item-{i}.bin", size=TINY),),
        dest_dir=dest,
    )


DOWNLOAD_TIMEOUT = 600.0


async def download_speed(manager: DownloadManager, request: GroupRequest, size: int) -> float:
    """MiB/s of one 2-file group, from enqueue to its last verified byte. A download that does
    not finish in DOWNLOAD_TIMEOUT is a finding: its state and its tasks' stacks are printed."""
    began = time.perf_counter()
    gid = await manager.enqueue(request)
    try:
        await asyncio.wait_for(manager.wait([gid]), DOWNLOAD_TIMEOUT)
    except TimeoutError:
        view = await manager.group_view(gid)
        for f in view.files:
            print(f"STUCK {f.ref} {f.status} {f.downloaded}/{f.total} {f.error_message}")
        for task in asyncio.all_tasks():
            if task.get_name().startswith("modelfetch"):
                task.print_stack(file=sys.stderr)
        raise RuntimeError(f"{request.name} did not finish in {DOWNLOAD_TIMEOUT:.0f} s") from None
    elapsed = time.perf_counter() - began
    view = await manager.group_view(gid)
    if view.status != "completed":
        raise RuntimeError(f"the download ended {view.status}: {view.files}")
    return 2 * size / MiB / elapsed


def subscribe_all(
    manager: DownloadManager, count: int
) -> tuple[list[SubscriberStats], list[asyncio.Task[None]], contextlib.ExitStack]:
    stack = contextlib.ExitStack()
    stats = [SubscriberStats() for _ in range(count)]
    tasks = []
    for s in stats:
        sub = stack.enter_context(manager.subscribe())
        tasks.append(asyncio.get_running_loop().create_task(drain(sub, s)))
    return stats, tasks, stack


async def stop_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run(args: argparse.Namespace) -> Results:
    size = args.size_mib * MiB
    big, sha = source_files(size)
    results = Results(args.items, args.subscribers, size)
    rss = RssSampler()
    rss.start()
    rss.mark("start")
    settings = ManagerSettings(max_active=2, progress_interval=0.5, checkpoint_interval=1.0)
    with (
        tempfile.TemporaryDirectory(prefix="load-", dir=BENCH_DIR) as scratch,
        file_server(BENCH_DIR) as (base, kind),
    ):
        results.server = kind
        work = Path(scratch)
        print(
            f"load: {args.items} items, {args.subscribers} subscribers, server {kind}", flush=True
        )

        # 1. baseline
        async with DownloadManager(home=work / "base", settings=settings) as manager:
            baseline = await download_speed(
                manager, big_group(base, work / "base-out", size, sha, big.name, "a"), size
            )
        shutil.rmtree(work / "base-out", ignore_errors=True)
        results.add("download, empty queue (baseline)", f"{baseline:.0f} MiB/s")

        # 2. enqueue N items, subscribers attached
        home = work / "home"
        out = work / "out"
        enqueue = Samples()
        async with DownloadManager(home=home, settings=settings, workers=False) as manager:
            stats, tasks, stack = subscribe_all(manager, args.subscribers)
            with stack:
                began = time.perf_counter()
                for i in range(args.items):
                    await timed(enqueue, manager.enqueue(tiny_group(base, out, i)))
                    if i % 100 == 0:
                        await asyncio.sleep(0)  # let the subscribers run, as a server would
                total = time.perf_counter() - began
                await asyncio.sleep(0.5)
                await stop_all(tasks)
        first = Samples(enqueue.values[: max(1, args.items // 10)])
        last = Samples(enqueue.values[-max(1, args.items // 10) :])
        results.add(f"enqueue 0 -> {args.items} (total)", f"{total:.1f} s")
        results.add("enqueue latency, first 10%", first.ms())
        results.add("enqueue latency, last 10%", last.ms())
        results.add("subscribers during enqueue", summarize(stats))
        rss.mark("queued")

        # 3. a manager on the full queue, a download, pollers and subscribers
        began = time.perf_counter()
        async with DownloadManager(home=home, settings=settings) as manager:
            started = time.perf_counter() - began
            results.add(f"manager start with {args.items} items", f"{started * 1e3:.0f} ms")
            stats, tasks, stack = subscribe_all(manager, args.subscribers)
            with stack:
                snap, view, pause, move = Samples(), Samples(), Samples(), Samples()
                ids = list(range(10, args.items, max(1, args.items // 200)))
                rng = random.Random(1)

                async def dashboard() -> None:
                    while True:
                        await timed(snap, manager.snapshot())
                        await asyncio.sleep(0.5)

                async def clicks() -> None:
                    while True:
                        gid = rng.choice(ids)
                        await timed(view, manager.group_view(gid))
                        began = time.perf_counter()
                        await manager.pause(gid)
                        await manager.resume(gid)
                        pause.add(time.perf_counter() - began)
                        await asyncio.sleep(0.2)

                pollers = [asyncio.create_task(dashboard()), asyncio.create_task(clicks())]
                loaded = await download_speed(
                    manager, big_group(base, work / "loaded-out", size, sha, big.name, "b"), size
                )
                await stop_all(pollers)
                # Moves block the loop for as long as they take: timed on their own, after the
                # download, a few times only (each is O(n^2) in the queue length today).
                deadline = time.monotonic() + args.move_budget
                while len(move.values) < 5 and time.monotonic() < deadline:
                    await timed(move, manager.move_to_front(rng.choice(ids)))
                await stop_all(tasks)
                results.add(
                    f"download with {args.items} queued, a dashboard, clicks, subscribers",
                    f"{loaded:.0f} MiB/s ({loaded / baseline:.0%} of the baseline)",
                )
                results.add(f"snapshot() of {args.items} items, during the download", snap.ms())
                results.add("group_view(id), during the download", view.ms())
                results.add("pause + resume one queued item", pause.ms())
                results.add("move_to_front(id) (after the download)", move.ms())
                results.add("subscribers during the download", summarize(stats))
                shutil.rmtree(work / "loaded-out", ignore_errors=True)
                if args.http:
                    await http_phase(manager, args, base, big.name, size, sha, work, results)
            rss.mark("loaded")
        await rss.stop()
        peak = max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB)
        results.add(
            "RSS: start / after enqueue / peak",
            f"{rss.marks['start'] / MiB:.0f} / {rss.marks['queued'] / MiB:.0f} /"
            f" {peak / MiB:.0f} MiB",
        )
    return results


async def http_phase(
    manager: DownloadManager,
    args: argparse.Namespace,
    base: str,
    name: str,
    size: int,
    sha: str,
    work: Path,
    results: Results,
) -> None:
    try:
        from modelfetch.server import daemon_file, serve
    except ImportError as exc:
        results.add("HTTP/SSE", f"skipped: {exc}")
        return
    server = asyncio.create_task(serve(manager, port=0))
    try:
        for _ in range(100):
            if daemon_file(manager.home).exists():
                break
            await asyncio.sleep(0.05)
        url = json.loads(daemon_file(manager.home).read_text())["url"]
        sse = [SubscriberStats() for _ in range(args.subscribers)]
        # The clients are other processes, as browsers are: a dashboard's wait is the daemon's
        # answer, not also its own turn on the daemon's busy loop.
        clients = await sse_clients.start(url, args.subscribers)
        poller = await reporter.start(
            str(Path(__file__).with_name("api_poller.py")), url, str(args.items)
        )
        # The download again until the poller has had `--http-seconds`: a 2 s phase gives a
        # p50 of a handful of samples.
        speeds: list[float] = []
        began = time.perf_counter()
        first_ended = 0.0  # time.time() when the first download (the clients' start) ended
        while not speeds or time.perf_counter() - began < args.http_seconds:
            out = work / f"http-out-{len(speeds)}"
            tag = f"c{len(speeds)}"
            speeds.append(
                await download_speed(manager, big_group(base, out, size, sha, name, tag), size)
            )
            first_ended = first_ended or time.time()
            shutil.rmtree(out, ignore_errors=True)
        speed = statistics.mean(speeds)
        polled = await reporter.finish(poller)
        report = await sse_clients.finish(clients)
        if polled["error"]:
            raise RuntimeError(f"the API poller: {polled['error']}")
        for stats, events in zip(sse, report["events"], strict=False):
            stats.events = int(events)
        sse[0].missed = int(report["missed"])
        for lag in report["lags"]:
            sse[0].lag.add(lag)
        listing = Samples([took for _, took in polled["listing"]])
        early = Samples([took for at, took in polled["listing"] if at < first_ended])
        one = Samples([took for _, took in polled["one"]])
        results.add(
            "HTTP: GET /api/downloads (first page)",
            f"{listing.ms()}, {polled['listing_bytes'] / MiB:.1f} MiB body",
        )
        results.add("HTTP: ... of which during the first download (the clients' start)", early.ms())
        results.add("HTTP: GET /api/downloads/{id}", one.ms())
        results.add(
            "HTTP: download with SSE clients + polling",
            f"{speed:.0f} MiB/s (mean of {len(speeds)} downloads)",
        )
        results.add("HTTP: SSE clients", summarize(sse))
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--size-mib", type=int, default=512, help="size of each big file")
    parser.add_argument("--http", action="store_true", help="also measure the daemon's API")
    parser.add_argument(
        "--http-seconds",
        type=float,
        default=8.0,
        help="download again until the API poller has run this long",
    )
    parser.add_argument(
        "--move-budget", type=float, default=120.0, help="seconds to spend timing moves"
    )
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print()
    print(results.table())
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as fh:
            fh.write(results.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
