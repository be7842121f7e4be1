"""modelfetch against curl and aria2c, from nginx on loopback: `make bench`.

    python benchmarks/bench_transfer.py [--runs 3] [--size-mib 1024] [--cases 1,2,3,4]
                                        [--markdown FILE]

Cases (each tool run `--runs` times, tools alternating, the order rotated every round):
  1. one 1 GiB file, unthrottled: modelfetch vs `curl -o`, `curl -o` + hashlib SHA-256 of the
     result ("curl+verify": modelfetch always verifies, curl never does), `aria2c -x1` and
     `aria2c -x8 -s8 -k1M`;
  2. the same file from a server that caps each connection at 25 MiB/s across all its
     requests (benchmarks/capped_server.py; nginx's `limit_rate` caps each request and lets
     its first second through, which short ranged requests never leave): modelfetch vs
     `aria2c -x8 -s8 -k1M` and `-x16 -s16 -k1M`;
  3. 200 files of 256 KiB: modelfetch (a DownloadManager with max_active 16: queue, SQLite
     store, events, SHA-256 of every file) vs `aria2c -j16 -i list` (no verification); also
     `modelfetch get --input-file list` (the command line, planner and display included);
  4. peak RSS of modelfetch during case 1, and of a manager working a queue of 1,000 items.

Every tool runs as its own process and is timed from spawn to exit (modelfetch therefore pays
its interpreter start and imports, as a command-line user would); modelfetch also reports the
time its work took inside the process. Before each run: destination deleted, `sync`, 0.3 s pause.
Source files are random bytes generated once under .bench/ (git-ignored) and served by nginx
(apt-get installs it when missing) from a scratch config: one worker, sendfile on.

Loopback numbers on a shared 2-CPU machine swing by +-30% between runs: read the medians, note
the load average printed with them, and distrust differences smaller than that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench_common import (
    BENCH_DIR,
    CHILD,
    OUT_DIR,
    QUEUE_ITEMS,
    RATE_CAP,
    ROOT,
    SMALL_FILES,
    SMALL_SIZE,
    Case,
    KiB,
    MiB,
    Run,
    Servers,
    _sha256_of,
    aria2,
    clean,
    load,
    run_case,
    running_capped,
    running_nginx,
    small_files,
    source_file,
    stop,
    timed,
)
from bench_report import DAEMON_ROW, report

# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


def case_big(servers: Servers, size: int, capped: str | None = None) -> Case:
    """Case 1 from nginx, or case 2 from `capped` (the per-connection capped server's URL)."""
    source, sha256 = source_file(size)
    base = capped if capped is not None else servers.plain
    url = f"{base}/{source.name}"
    out = OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "download.bin"

    fetch = [sys.executable, str(CHILD), "fetch", url, str(dest), sha256, str(size)]

    def modelfetch() -> Run:
        clean(dest)
        return timed(fetch)

    def modelfetch_one_stream() -> Run:
        clean(dest)
        return timed([*fetch, "--connections", "1"])

    def curl() -> Run:
        clean(dest)
        run = timed(["curl", "-s", "-o", str(dest), url])
        check_size(dest, size)
        return run

    def curl_verify(fsync: bool) -> Callable[[], Run]:
        # curl, then the checks modelfetch makes: the digest, and (with fsync) the bytes on disk
        # before the command returns.
        def go() -> Run:
            clean(dest)
            began = time.perf_counter()
            timed(["curl", "-s", "-o", str(dest), url])
            if _sha256_of(dest) != sha256:
                raise SystemExit("curl fetched a corrupt file")
            if fsync:
                fd = os.open(dest, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return Run(time.perf_counter() - began)

        return go

    def hash_alone() -> Run:
        # A floor for any tool that verifies: SHA-256 is sequential, so one core hashes the
        # whole file however many connections fetched it. Hashes the (page-cached) source.
        began = time.perf_counter()
        if _sha256_of(source) != sha256:
            raise SystemExit("the source file changed")
        return Run(time.perf_counter() - began)

    def write_alone() -> Run:
        # The floor of any tool that says "done" only once the bytes are on disk: writing the
        # file (from the page-cached source, no network) and fsyncing it. On a disk slower
        # than loopback this, not curl or the hash, is what a durable download cannot beat.
        clean(dest)
        began = time.perf_counter()
        copy_and_fsync(source, dest)
        return Run(time.perf_counter() - began)

    def aria(*options: str) -> Callable[[], Run]:
        def go() -> Run:
            clean(dest)
            run = timed(aria2(*options, "-d", str(out), "-o", dest.name, url))
            check_size(dest, size)
            return run

        return go

    if capped:
        tools = {
            "modelfetch": modelfetch,
            "aria2c -x8 -s8 -k1M": aria("-x8", "-s8", "-k1M"),
            # Not asked for: aria2's own maximum, for a like-for-like connection count.
            "aria2c -x16 -s16 -k1M": aria("-x16", "-s16", "-k1M"),
        }
        title = f"2. one {size // MiB} MiB file, each connection capped at {RATE_CAP}"
        baselines = ["aria2c -x8 -s8 -k1M", "aria2c -x16 -s16 -k1M"]
    else:
        tools = {
            "modelfetch": modelfetch,
            # Not asked for: the single stream (what segmentation costs where CPU is the limit).
            "modelfetch, 1 connection": modelfetch_one_stream,
            "curl -o": curl,
            "curl+verify": curl_verify(fsync=False),
            "curl+verify+fsync": curl_verify(fsync=True),
            # Not a download: the time SHA-256 alone takes over the file, on one core.
            "SHA-256 alone (hashlib)": hash_alone,
            # Not a download either: the disk's share, writing the file and fsyncing it.
            "write+fsync alone": write_alone,
            "aria2c -x1": aria("-x1"),
            "aria2c -x8 -s8 -k1M": aria("-x8", "-s8", "-k1M"),
        }
        title = f"1. one {size // MiB} MiB file, unthrottled"
        baselines = [
            "curl -o",
            "curl+verify",
            "curl+verify+fsync",
            "aria2c -x1",
            "aria2c -x8 -s8 -k1M",
        ]
    floor = () if capped else ("curl -o", "SHA-256 alone (hashlib)")
    durable = () if capped else (*floor, "write+fsync alone")
    return Case(title, size, tools, baselines, floor_of=floor, durable_floor_of=durable)


def copy_and_fsync(source: Path, dest: Path) -> None:
    """Write `source` (page-cached) to `dest` the way modelfetch writes a `.part`, so that
    this is the disk's best: blocks reserved up front, writeback started every 64 MiB
    (sync_file_range), one fsync at the end. A plain write-then-fsync took 4.2 s here, longer
    than modelfetch's whole download: it leaves all of the writeback to the fsync."""
    from modelfetch.transfer import sink

    step = sink.WRITEBACK_STEP
    buffer = memoryview(bytearray(4 * MiB))
    with source.open("rb", buffering=0) as reader, dest.open("wb", buffering=0) as writer:
        fd = writer.fileno()
        if sink._fallocate is not None:
            sink._fallocate(fd, 0, 0, source.stat().st_size)
        done = flushed = 0
        while n := reader.readinto(buffer):
            done += os.pwrite(fd, buffer[:n], done)
            if done - flushed >= step and sink._sync_file_range is not None:
                sink._sync_file_range(fd, flushed, done - flushed, 2)  # SYNC_FILE_RANGE_WRITE
                flushed = done
        os.fsync(fd)


def check_size(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        raise SystemExit(f"{path} has {path.stat().st_size} bytes, expected {size}")


def write_plan(path: Path, groups: Sequence[Mapping[str, object]]) -> None:
    path.write_text(json.dumps({"groups": groups}))


@dataclass
class SmallDaemon:
    """`modelfetch serve` for case 3's daemon row: its own home (and so its own config and
    queue) in a temporary directory, on a free loopback port."""

    home: Path
    url: str


@contextmanager
def small_daemon() -> Iterator[SmallDaemon]:
    """Started once before case 3's rounds (its start is not timed), stopped after them."""
    with tempfile.TemporaryDirectory(prefix="mf-bench-daemon-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "MODELFETCH_HOME": str(home)}
        env.pop("MODELFETCH_TOKEN", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfetch", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        info = home / "daemon.json"
        deadline = time.monotonic() + 20
        while not info.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.communicate()[1].decode()[-2000:]
                raise SystemExit(f"modelfetch serve did not start: {err}")
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written whole, but let the listener settle
        url = json.loads(info.read_text())["url"]
        try:
            yield SmallDaemon(home, url)
        finally:
            stop(proc, grace=10)


def _forget_finished(daemon: SmallDaemon) -> None:
    """Each round starts from an empty queue, as the other rows do (not timed)."""
    import urllib.request

    request = urllib.request.Request(
        f"{daemon.url}/api/forget-finished",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def case_small(servers: Servers, daemon: SmallDaemon | None = None) -> Case:
    files = small_files()
    out = OUT_DIR / "small"
    home = OUT_DIR / "home"
    plan = OUT_DIR / "small-plan.json"
    write_plan(
        plan,
        [
            {
                "name": "small",
                "dest_dir": str(out),
                "files": [
                    {
                        "url": f"{servers.plain}/{name}",
                        "path": Path(name).name,
                        "size": SMALL_SIZE,
                        "sha256": sha,
                    }
                    for name, sha in files
                ],
            }
        ],
    )
    url_list = OUT_DIR / "small-list.txt"
    url_list.write_text("".join(f"{servers.plain}/{name}\n" for name, _ in files))

    def modelfetch() -> Run:
        clean(out, home)
        return timed(
            [sys.executable, str(CHILD), "manager", str(home), str(plan), "--max-active", "16"]
        )

    cli_home = OUT_DIR / "home-cli"

    def get_list(home: Path, what: str) -> Run:
        """`modelfetch get --jobs 16 --input-file list` with `home`, spawn to exit."""
        argv = [sys.executable, "-m", "modelfetch", "--home", str(home), "get", "--dir", str(out)]
        run = timed([*argv, "--jobs", "16", "--input-file", str(url_list)])
        if len(list(out.iterdir())) != SMALL_FILES:
            raise SystemExit(f"modelfetch get ({what}) did not leave every file")
        return run

    def command_line() -> Run:
        # What a user types: the CLI with its daemon check, planner, display and exit.
        clean(out, cli_home)
        return get_list(cli_home, "no daemon")

    def via_daemon() -> Run:
        # The same command with `modelfetch serve` running: one batch request, then the
        # event stream; only the `get` is timed.
        assert daemon is not None
        _forget_finished(daemon)
        clean(out)
        return get_list(daemon.home, "daemon")

    def transfers_only() -> Run:
        clean(out)
        return timed([sys.executable, str(CHILD), "files", str(plan), "--concurrency", "16"])

    def aria() -> Run:
        clean(out)
        return timed(aria2("-j16", "-d", str(out), "-i", str(url_list)))

    return Case(
        f"3. {SMALL_FILES} files of {SMALL_SIZE // KiB} KiB",
        SMALL_FILES * SMALL_SIZE,
        {
            "modelfetch": modelfetch,
            # Not asked for: the same through the command line (`get --input-file`).
            "modelfetch get -I list": command_line,
            # The daemon goal's row: the same command while `modelfetch serve` runs.
            **({DAEMON_ROW: via_daemon} if daemon is not None else {}),
            # Not asked for: the transfer layer alone (no queue, store or events), to show
            # where the time goes.
            "modelfetch fetch_file x16": transfers_only,
            "aria2c -j16 -i list": aria,
        },
        ["aria2c -j16 -i list"],
    )


def queue_rss(servers: Servers) -> Run:
    """A manager given 1,000 one-file downloads at once (16 at a time), lists them, works them."""
    files = small_files()
    out = OUT_DIR / "queue"
    home = OUT_DIR / "home-queue"
    plan = OUT_DIR / "queue-plan.json"
    groups = []
    for i in range(QUEUE_ITEMS):
        name, sha = files[i % len(files)]
        groups.append(
            {
                "name": f"item-{i}",
                "dest_dir": str(out / f"{i:04d}"),
                "files": [
                    {
                        "url": f"{servers.plain}/{name}",
                        "path": Path(name).name,
                        "size": SMALL_SIZE,
                        "sha256": sha,
                    }
                ],
            }
        )
    write_plan(plan, groups)
    clean(out, home)
    run = timed(
        [
            sys.executable,
            str(CHILD),
            "manager",
            str(home),
            str(plan),
            "--max-active",
            "16",
            "--hold-queue",
        ]
    )
    clean(out, home)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--cases", default="1,2,3,4")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    wanted = {int(c) for c in args.cases.split(",")}
    for tool in ("curl", "aria2c"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required as a baseline (apt-get install curl aria2)")
    size = args.size_mib * MiB
    source_file(size)
    small_files()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    # An installed package carries its bytecode (pip compiles at install); this checkout is an
    # editable install, and where PYTHONDONTWRITEBYTECODE is set every modelfetch child would
    # otherwise compile the package from source on each spawn (~0.1 s).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    began = time.monotonic()
    start_load = load()
    cases: list[Case] = []
    rss: dict[str, int] = {}
    with running_nginx(BENCH_DIR) as servers:
        if 1 in wanted or 4 in wanted:
            case = case_big(servers, size)
            if 1 not in wanted:  # case 4 alone: modelfetch only
                case.tools = {"modelfetch": case.tools["modelfetch"]}
                case.baseline_for_ratio = []
            run_case(case, args.runs)
            cases.append(case)
            peaks = [r.rss_kib for r in case.runs["modelfetch"] if r.rss_kib]
            if peaks:
                rss[f"during case 1 (one {size // MiB} MiB file)"] = max(peaks)
        if 2 in wanted:
            with running_capped(BENCH_DIR) as capped:
                case = case_big(servers, size, capped)
                run_case(case, args.runs)
            cases.append(case)
        if 3 in wanted:
            with small_daemon() as daemon:
                case = case_small(servers, daemon)
                run_case(case, args.runs)
            cases.append(case)
        if 4 in wanted:
            print(f"\n== 4. a manager with {QUEUE_ITEMS} items queued  (load {load()})", flush=True)
            run = queue_rss(servers)
            print(f"  {QUEUE_ITEMS} items: {run.seconds:.1f} s, peak RSS {run.rss_kib} KiB")
            if run.rss_kib:
                what = f"a manager with {QUEUE_ITEMS} items queued (16 active), listing, working"
                rss[what] = run.rss_kib
    (OUT_DIR / "download.bin").unlink(missing_ok=True)
    table = report(cases, rss, (start_load, load()))
    print("\n" + table)
    print(f"\n(total {time.monotonic() - began:.0f} s)")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
