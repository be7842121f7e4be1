"""Soak: sharded models and plain files through a chaos proxy while the manager is SIGKILLed at
random moments and restarted, again and again.

At the end every file is byte-exact, no row is left `active`, the database passes
`PRAGMA integrity_check`, and the bytes the origin served beyond one copy of each file stay within
the bound `refetch_bound` states. While it runs, inotify watches the destination tree: a final
file name may only ever appear by a rename (never be created or written in place), and when it
appears it must already have its full size and its right SHA-256.

The bounded run (in the normal suite) has a chaos phase of `SOAK_SECONDS` (default 30 s) and
then a calm finish. `make soak` runs the long one:

    MODELFETCH_SOAK_SECONDS=600 .venv/bin/pytest -m slow tests/test_soak.py

which repeats whole scenarios with fresh seeds until the time is used up. A failure prints its
seed; `MODELFETCH_SOAK_SEED=<seed>` replays the same fault plans (the kill times too; the exact
interleaving with the child process cannot be replayed, the faults each request meets can).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import signal
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from modelfetch.core.models import FileRecord, FileStatus, GroupRecord
from modelfetch.core.paths import PARTIAL_SUFFIXES
from modelfetch.manager import DownloadManager
from modelfetch.store import SqliteStore
from modelfetch.testing.chaosproxy import ChaosConfig, ChaosProxy
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

CHILD = Path(__file__).with_name("soak_child.py")
MiB = 1 << 20
KiB = 1 << 10
MAX_ACTIVE = 3
RATE = 3 * MiB // 2  # per CDN connection: slow enough that kills land mid-file
STALL_TIMEOUT = 2.0
BIG = 66 * MiB + 4321  # goes segmented (threshold 64 MiB)
# Seconds of origin bytes a cut connection may waste: what sits in buffers, and for a segmented
# file what arrived since its segment map was last saved (every second).
SLACK = 2.0

CDN_CHAOS = ChaosConfig(
    reset=0.14,
    truncate=0.12,
    stall=0.1,
    drip=0.08,
    flip=0.06,
    delay_head=0.08,
    cut_bytes=(0, 6 * MiB),
    stall_seconds=(0.3, 4.0),
    drip_seconds=(0.3, 1.5),
    drip_rate=(64 * KiB, 512 * KiB),
    head_delay=(0.1, 3.0),
)
# No byte flips on the Hub: its JSON carries no checksum of its own (TLS is what protects it in
# real life), so a flipped digit in a listed size or digest would be a different, consistent plan.
HUB_CHAOS = ChaosConfig(
    reset=0.06,
    truncate=0.06,
    stall=0.04,
    drip=0.03,
    delay_head=0.04,
    cut_bytes=(0, 1500),
    stall_seconds=(0.3, 3.0),
    drip_seconds=(0.2, 1.0),
    drip_rate=(2 * KiB, 32 * KiB),
    head_delay=(0.1, 2.0),
)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


SOAK_SECONDS = _env_float("MODELFETCH_SOAK_SECONDS", 30.0)


# -- the destination watcher -------------------------------------------------------------------

_IN_MODIFY = 0x2
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_Q_OVERFLOW = 0x4000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
_TEMP_SUFFIXES = (*PARTIAL_SUFFIXES, ".tmp", ".link-tmp")


@dataclass
class Sighting:
    how: str  # "rename" or "scan"
    size: int
    sha256: str


@dataclass
class DirWatcher:
    """inotify on a directory tree (new subdirectories are watched as they appear). Records the
    first sighting of every final-named file and every violation of "final names appear only by
    an atomic rename of a complete, verified file"."""

    root: Path
    expected: dict[Path, tuple[int, str]]  # final path -> (size, sha256)
    seen: dict[Path, Sighting] = field(default_factory=dict)
    renames: dict[Path, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    _fd: int = -1
    _dirs: dict[int, Path] = field(default_factory=dict)

    def start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init = libc.inotify_init1
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._fd = self._init(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.root.mkdir(parents=True, exist_ok=True)
        self._watch(self.root)
        asyncio.get_running_loop().add_reader(self._fd, self._drain)

    def stop(self) -> None:
        if self._fd >= 0:
            self._drain()
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _watch(self, directory: Path) -> None:
        mask = _IN_CREATE | _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_MODIFY
        wd = self._add(self._fd, os.fsencode(directory), mask)
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOENT:
                return
            raise OSError(code, f"inotify_add_watch {directory}")
        self._dirs[wd] = directory
        # Whatever appeared before the watch existed: judge it as found (it must be right too).
        for entry in directory.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                self._watch(entry)
            elif _is_final(entry.name):
                self._sight(entry, "scan")

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * KiB)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self.violations.append("inotify queue overflowed: cannot vouch for the run")
                    continue
                directory = self._dirs.get(wd)
                if directory is None:
                    continue
                path = directory / os.fsdecode(raw.rstrip(b"\0"))
                if mask & _IN_ISDIR:
                    if mask & (_IN_CREATE | _IN_MOVED_TO):
                        self._watch(path)
                    continue
                if not _is_final(path.name):
                    continue
                if mask & _IN_MOVED_TO:
                    self.renames[path] = self.renames.get(path, 0) + 1
                    self._sight(path, "rename")
                elif mask & _IN_CREATE:
                    self.violations.append(f"{path} was created in place, not renamed into place")
                elif mask & (_IN_MODIFY | _IN_CLOSE_WRITE):
                    self.violations.append(f"{path} was written under its final name")

    def _sight(self, path: Path, how: str) -> None:
        try:
            with path.open("rb") as fh:  # this inode, whatever is renamed over it later
                size = os.fstat(fh.fileno()).st_size
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            self.violations.append(f"{path} appeared and vanished before it could be read")
            return
        want = self.expected.get(path)
        if want is None:
            self.violations.append(f"{path} is not a file this run should produce")
        elif (size, digest) != want:
            self.violations.append(
                f"{path} appeared ({how}) with {size} bytes sha256 {digest[:12]}…,"
                f" expected {want[0]} bytes sha256 {want[1][:12]}…"
            )
        self.seen.setdefault(path, Sighting(how, size, digest))


def _is_final(name: str) -> bool:
    return not name.endswith(_TEMP_SUFFIXES)


@contextlib.contextmanager
def watching(root: Path, expected: dict[Path, tuple[int, str]]) -> Iterator[DirWatcher]:
    watcher = DirWatcher(root, expected)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


# -- the workload --------------------------------------------------------------------------------


@dataclass
class Workload:
    plan: dict[str, object]
    expected: dict[Path, tuple[int, str]]  # final path -> (size, sha256)
    lfs_bytes: int  # what one copy of every CDN-served file weighs
    largest: int


def _model_repos(hub: FakeHub) -> list[dict[str, object]]:
    alpha = [
        RepoFile(f"Q4_K_M/alpha-Q4_K_M-{i:05d}-of-00003.gguf", size=5 * MiB + 1013 * i, seed=i)
        for i in range(1, 4)
    ]
    alpha.append(RepoFile("config.json", content=json.dumps({"n": list(range(300))}).encode()))
    hub.add_repo("soak/alpha-GGUF", alpha)
    hub.add_repo(
        "soak/beta-GGUF",
        [
            RepoFile("beta-Q8_0.gguf", size=9 * MiB + 77, seed=8),
            RepoFile("README.md", content=b"# beta\n" * 200),
        ],
    )
    hub.add_repo(
        "soak/gamma-GGUF",
        [
            RepoFile(f"gamma-Q5_K_M-{i:05d}-of-00002.gguf", size=7 * MiB - 3 * i, seed=20 + i)
            for i in (1, 2)
        ],
    )
    # Above the segmented-transfer threshold (64 MiB): several ranged connections, a segment map.
    hub.add_repo("soak/delta-GGUF", [RepoFile("delta-Q4_0.gguf", size=BIG, seed=40)])
    hub.add_repo(
        "soak/plain",
        [
            RepoFile("blob-a.bin", size=4 * MiB, seed=31, lfs=True),
            RepoFile("blob-b.bin", size=3 * MiB + 5, seed=32, lfs=True),
        ],
    )
    return [
        {"spec": "soak/alpha-GGUF:Q4_K_M", "include": ["config.json"]},
        {"spec": "soak/beta-GGUF:Q8_0", "include": ["README.md"]},
        {"spec": "soak/gamma-GGUF:Q5_K_M"},
        {"spec": "soak/delta-GGUF"},
    ]


async def build_workload(hub: FakeHub, hub_url: str, models: Path) -> Workload:
    specs = _model_repos(hub)
    expected: dict[Path, tuple[int, str]] = {}
    lfs = 0
    for repo in ("soak/alpha-GGUF", "soak/beta-GGUF", "soak/gamma-GGUF", "soak/delta-GGUF"):
        for path in _paths(hub, repo):
            info = hub.file(repo, path)
            expected[models / repo / path] = (info.size, info.sha256)
            lfs += info.size if info.lfs else 0
    groups = []
    async with aiohttp.ClientSession() as session:
        for path in ("blob-a.bin", "blob-b.bin"):
            info = hub.file("soak/plain", path)
            # A plain URL: the signed CDN URL itself (it points at the CDN proxy), with the
            # checksum a careful user would pass along.
            async with session.head(
                f"{hub_url}/soak/plain/resolve/main/{path}", allow_redirects=False
            ) as resp:
                url = resp.headers["Location"]
            dest_dir = models / "plain"
            groups.append(
                {
                    "name": path,
                    "dest_dir": str(dest_dir),
                    "files": [{"url": url, "path": path, "size": info.size, "sha256": info.sha256}],
                }
            )
            expected[dest_dir / path] = (info.size, info.sha256)
            lfs += info.size
    plan = {
        "hub": hub_url,
        "models_dir": str(models),
        "specs": specs,
        "groups": groups,
        "max_active": MAX_ACTIVE,
        "stall_timeout": STALL_TIMEOUT,
        "retry_rounds": 6,
    }
    return Workload(plan, expected, lfs, max(size for size, _ in expected.values()))


def _paths(hub: FakeHub, repo: str) -> list[str]:
    if repo == "soak/alpha-GGUF":
        return [f"Q4_K_M/alpha-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)] + ["config.json"]
    if repo == "soak/beta-GGUF":
        return ["beta-Q8_0.gguf", "README.md"]
    if repo == "soak/delta-GGUF":
        return ["delta-Q4_0.gguf"]
    return [f"gamma-Q5_K_M-{i:05d}-of-00002.gguf" for i in (1, 2)]


# -- one scenario ----------------------------------------------------------------------------------


@dataclass
class SoakReport:
    seed: int
    kills: int = 0
    runs: int = 0
    seconds: float = 0.0
    served: int = 0  # body bytes the CDN origin sent
    one_copy: int = 0
    bound: int = 0
    flips: int = 0
    interrupted: int = 0
    in_flight_allowance: int = 0
    kill_times: list[float] = field(default_factory=list)
    cdn_summary: dict[str, int] = field(default_factory=dict)
    hub_summary: dict[str, int] = field(default_factory=dict)
    integrity_checks: int = 0

    @property
    def refetched(self) -> int:
        return self.served - self.one_copy

    def line(self) -> str:
        return (
            f"seed={self.seed} {self.seconds:.0f}s runs={self.runs} kills={self.kills}"
            f" refetched={self.refetched / MiB:.1f}MiB (bound {self.bound / MiB:.1f}MiB,"
            f" one copy {self.one_copy / MiB:.1f}MiB, {self.flips} flips,"
            f" {self.interrupted} cut connections) cdn={self.cdn_summary}"
            f" hub={self.hub_summary}"
        )


def refetch_bound(report: SoakReport, largest: int) -> int:
    """The stated bound on the bytes the origin serves beyond one copy of each file.

    - A flipped byte is found only by the final SHA-256, and the policy then starts that file
      again from zero: at most one whole file per flip that fired (`largest`).
    - Any other interruption (a kill, a reset, a truncation, a stall past the watchdog) loses
      only what was in flight on that connection, never what reached the `.part` (for a
      segmented file: what its saved segment map covers). The origin sends at most `RATE`
      bytes/s per connection, so that is at most what it sent while the proxy held bytes back
      (a stall, a drip, a delayed head) plus `SLACK` seconds: `RATE * (held + SLACK)` for every
      connection that did not end normally or was open when a kill came.
    """
    return report.flips * largest + report.in_flight_allowance


async def run_child(home: Path, plan: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), str(home), str(plan), stdout=out, stderr=out
        )


async def soak(tmp_path: Path, seed: int, chaos_seconds: float) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport(seed)
    home, models = tmp_path / "home", tmp_path / "models"
    plan_file, log = tmp_path / "plan.json", tmp_path / "child.log"
    async with (
        FakeHub() as hub,
        ChaosProxy(hub.endpoint, seed=seed, config=HUB_CHAOS) as hub_proxy,
        ChaosProxy(hub.cdn_endpoint, seed=seed + 1, config=CDN_CHAOS) as cdn_proxy,
    ):
        hub.cdn_public_url = cdn_proxy.url
        hub_proxy.config = ChaosConfig()  # calm while the test itself asks for the URLs
        work = await build_workload(hub, hub_proxy.url, models)
        hub_proxy.config = HUB_CHAOS
        plan_file.write_text(json.dumps(work.plan))
        hub.add_fault(Fault("throttle", origin="cdn", rate=RATE))
        report.one_copy = work.lfs_bytes
        began = time.monotonic()
        try:
            with watching(models, work.expected) as watcher:
                failure = await _kill_and_restart(
                    home, plan_file, log, rng, began + chaos_seconds, report
                )
                if failure is None:
                    hub_proxy.config = cdn_proxy.config = ChaosConfig()
                    failure = await _calm_finish(home, plan_file, log, report)
        except BaseException:
            print(f"SOAK FAILED with seed {seed}: {report.line()}", file=sys.stderr)
            raise
        report.seconds = time.monotonic() - began
        report.cdn_summary = cdn_proxy.summary()
        report.hub_summary = hub_proxy.summary()
        report.flips = len(cdn_proxy.fired("flip"))
        cut = [
            r
            for r in cdn_proxy.log
            if r.outcome not in ("origin closed", "open")
            or any(r.started <= kill <= (r.ended or kill) for kill in report.kill_times)
        ]
        report.interrupted = len(cut)
        report.in_flight_allowance = sum(
            int(RATE * ((r.plan.seconds if r.fired else 0.0) + SLACK)) for r in cut
        )
        report.served = sum(r.bytes_sent for r in hub.requests(origin="cdn", method="GET"))
        report.bound = refetch_bound(report, work.largest)
        problems = [failure] if failure else []
        problems += _final_state_problems(home, models, work, watcher)
        if report.refetched > report.bound:
            problems.append(
                f"refetched {report.refetched} bytes, more than the bound {report.bound}"
            )
        if problems:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            pytest.fail(
                "\n".join(
                    [
                        f"SOAK FAILED with seed {seed}"
                        f" (replay: MODELFETCH_SOAK_SEED={seed}): {report.line()}",
                        *problems,
                        cdn_proxy.describe()[-2500:],
                        hub_proxy.describe()[-1200:],
                        "child log tail:",
                        tail,
                    ]
                ),
                pytrace=False,
            )
    return report


async def _kill_and_restart(
    home: Path, plan: Path, log: Path, rng: random.Random, deadline: float, report: SoakReport
) -> str | None:
    """Start the child, SIGKILL it after a random while, check the store, repeat until the
    deadline (or until a run finishes everything on its own)."""
    while time.monotonic() < deadline:
        life = rng.uniform(0.8, 4.0)
        proc = await run_child(home, plan, log)
        report.runs += 1
        try:
            code = await asyncio.wait_for(proc.wait(), life)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):  # it may have finished just now
                proc.send_signal(signal.SIGKILL)
                report.kill_times.append(time.time())
            code = await proc.wait()
        if code == -signal.SIGKILL:
            report.kills += 1
        elif code == 0:
            return None
        else:
            return f"a manager run exited with status {code} during the chaos phase"
        if (home / "state.db").exists():
            with SqliteStore(home) as store:
                check = store.integrity_check()
                report.integrity_checks += 1
            if check != "ok":
                return f"integrity_check after kill {report.kills}: {check}"
    return None


async def _calm_finish(home: Path, plan: Path, log: Path, report: SoakReport) -> str | None:
    proc = await run_child(home, plan, log)
    report.runs += 1
    try:
        code = await asyncio.wait_for(proc.wait(), 90)
    except TimeoutError:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        return "the calm finish did not complete within 90 s"
    return None if code == 0 else f"the calm finish exited with status {code}"


def _final_state_problems(
    home: Path, models: Path, work: Workload, watcher: DirWatcher
) -> list[str]:
    problems = list(watcher.violations)
    with SqliteStore(home) as store:
        check = store.integrity_check()
        files = store.files()
    if check != "ok":
        problems.append(f"final integrity_check: {check}")
    active = [f"{f.group_id}.{f.index}" for f in files if f.status is FileStatus.ACTIVE]
    if active:
        problems.append(f"rows left active: {active}")
    unfinished = [f"{f.name}: {f.status}" for f in files if f.status is not FileStatus.COMPLETED]
    if unfinished:
        problems.append(f"not completed: {unfinished}")
    for path, (size, digest) in work.expected.items():
        if not path.is_file():
            problems.append(f"missing {path}")
            continue
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if (path.stat().st_size, actual) != (size, digest):
            problems.append(f"{path} is not byte-exact")
        if path not in watcher.seen:
            problems.append(f"{path} was never seen arriving")
    leftovers = [str(p) for p in models.rglob("*") if p.is_file() and not _is_final(p.name)]
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers}")
    return problems


def _seed() -> int:
    env = os.environ.get("MODELFETCH_SOAK_SEED", "").strip()
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_soak_bounded(tmp_path: Path) -> None:
    seed = _seed()
    report = await soak(tmp_path, seed, SOAK_SECONDS if SOAK_SECONDS < 120 else 30.0)
    print(f"\nsoak: {report.line()}")
    assert report.kills >= 3, f"too few kills to mean anything: {report.line()}"
    assert report.integrity_checks >= 3


@pytest.mark.slow
@pytest.mark.skipif(
    "MODELFETCH_SOAK_SECONDS" not in os.environ,
    reason="the long soak runs under `make soak` (set MODELFETCH_SOAK_SECONDS)",
)
@pytest.mark.timeout(int(SOAK_SECONDS) + 600)
async def test_soak_long(tmp_path: Path) -> None:
    """`make soak`: whole scenarios with fresh seeds, back to back, for MODELFETCH_SOAK_SECONDS."""
    seed = _seed()
    ends = time.monotonic() + SOAK_SECONDS
    reports: list[SoakReport] = []
    while time.monotonic() < ends or not reports:
        n = len(reports)
        scenario = tmp_path / f"scenario-{n}"
        scenario.mkdir()
        chaos = min(60.0, max(10.0, ends - time.monotonic()))
        reports.append(await soak(scenario, seed + 1000 * n, chaos))
        print(f"soak {n}: {reports[-1].line()}", flush=True)
    kills = sum(r.kills for r in reports)
    refetched = sum(r.refetched for r in reports)
    print(
        f"\nsoak total: {len(reports)} scenarios, {kills} kills,"
        f" {sum(r.cdn_summary.get('connections', 0) for r in reports)} CDN connections,"
        f" refetched {refetched / MiB:.1f} MiB of {sum(r.served for r in reports) / MiB:.1f} MiB"
    )
    assert kills >= 3 * len(reports)


async def test_a_kill_between_the_publish_and_its_commit_costs_no_second_download(
    tmp_path: Path,
) -> None:
    async with FakeHub() as hub:
        hub.add_repo("o/k", [RepoFile("k.gguf", size=2 * MiB, seed=4)])
        info = hub.file("o/k", "k.gguf")
        dest = tmp_path / "out" / "k.gguf"
        dest.parent.mkdir()
        dest.write_bytes(hub.content("o/k", "k.gguf"))  # published, sidecar already gone
        record = FileRecord(
            0,
            1,
            hub.resolve_url("o/k", "k.gguf"),
            str(dest),
            "k.gguf",
            expected_size=info.size,
            bytes_total=info.size,
            expected_sha256=info.sha256,
        )
        with SqliteStore(tmp_path / "home") as store:
            group = store.add_group(
                GroupRecord(
                    key="k", spec="o/k", name="o/k", dest_dir=str(dest.parent), files=[record]
                )
            )
            assert store.transition(
                group.id, 1, FileStatus.ACTIVE, allowed_from=[FileStatus.QUEUED]
            )  # ...and then the process died
        async with DownloadManager(home=tmp_path / "home") as manager:
            await asyncio.wait_for(manager.wait([group.id]), 20)
            assert (await manager.group_view(group.id)).status == "completed"
        assert hub.requests(origin="cdn", method="GET") == []
