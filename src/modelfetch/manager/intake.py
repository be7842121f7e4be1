"""New downloads: a `GroupRequest` becomes stored, queued records; present files are adopted.

A file already at its destination with the expected digest is marked completed instead of
fetched again, when it is enqueued and at start (a publish whose commit a crash lost). Every
destination folder is checked first (`destinations.py`): nothing is queued for one that cannot
be written. `add_with_hub_token` plans and fetches one download with a Hub token the daemon's
client sent along: kept in memory for that download only, never in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modelfetch.core import events as ev
from modelfetch.core.errors import SpecError
from modelfetch.core.models import FileRecord, FileStatus, GroupRecord, GroupStatus
from modelfetch.layout import Layout
from modelfetch.manager import control
from modelfetch.manager.finalize import publish_links
from modelfetch.manager.groups import file_ref
from modelfetch.manager.partials import on_disk
from modelfetch.manager.transitions import finish_if_done
from modelfetch.requests import GroupRequest

if TYPE_CHECKING:
    import aiohttp

    from modelfetch.destinations import FolderChecks
    from modelfetch.hub import HubClient
    from modelfetch.manager.coordinator import DownloadManager
    from modelfetch.planner import Planner, PlanOptions

# Hub tokens a client sent with its request, by group id: memory only (never the store, never
# a view), used for that group's planning and transfers to the Hub's origin, gone at exit.
_GROUP_TOKENS: weakref.WeakKeyDictionary[DownloadManager, dict[int, str]] = (
    weakref.WeakKeyDictionary()
)


def group_token(m: DownloadManager, group_id: int) -> str | None:
    """The Hub token a client sent for this download, if any (else the manager's own)."""
    tokens = _GROUP_TOKENS.get(m)
    return tokens.get(group_id) if tokens else None


def _remember_token(m: DownloadManager, group_id: int, token: str | None) -> None:
    if token:
        tokens = _GROUP_TOKENS.get(m)
        if tokens is None:
            tokens = _GROUP_TOKENS[m] = {}
        tokens[group_id] = token


def make_planner(m: DownloadManager) -> Planner:
    """The planner: plain-URL probes go through the transfers' session; the Hub client (and,
    unless the manager was given one, an aiohttp session closed at shutdown) is made when a
    spec first needs the Hub."""
    from modelfetch.planner import Planner

    return Planner(
        None,
        lambda: hub_parts(m),
        hub_config=m.hub_config,
        probe_session=m._session_or_fail(),
        holds=m._host_holds,
    )


def hub_parts(
    m: DownloadManager,
    token: str | None = None,
    *,
    anonymous: bool = False,
    retry_delays: Sequence[float] | None = None,
) -> tuple[aiohttp.ClientSession, HubClient]:
    """The shared API session and a Hub client on it: with the manager's token, or `token`,
    or none at all (`anonymous`); `retry_delays` as HubClient takes them (None: its own)."""
    from modelfetch.hub import HubClient, make_api_session
    from modelfetch.hubconfig import HubConfig

    if m._api_session is None:
        m._api_session = m._external_api_session or make_api_session(network=m._network)
    proxies = m._network.proxies if m._network is not None else None
    if anonymous:
        config = HubConfig(m.hub_config.endpoint, None)
    else:
        config = m.hub_config if token is None else HubConfig(m.hub_config.endpoint, token)
    # Every client shares the manager's host holds: a 429 to one holds the host for all.
    holds = m._host_holds
    if retry_delays is None:
        return m._api_session, HubClient(m._api_session, config, proxies=proxies, holds=holds)
    hub = HubClient(m._api_session, config, proxies=proxies, holds=holds, retry_delays=retry_delays)
    return m._api_session, hub


def plan_options(
    m: DownloadManager,
    *,
    quant: str | None = None,
    revision: str | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    layout: Layout | str = Layout.PLAIN,
    models_dir: Path | None = None,
    dest_dir: Path | None = None,
    priority: int = 0,
) -> PlanOptions:
    """The planner's options for `DownloadManager.add`'s arguments."""
    from modelfetch.planner import PlanOptions

    return PlanOptions(
        models_dir=(models_dir or m.models_dir).expanduser().absolute(),
        layout=Layout(layout),
        quant=quant,
        revision=revision,
        include=tuple(include),
        exclude=tuple(exclude),
        dest_dir=dest_dir.expanduser().absolute() if dest_dir else None,
        priority=priority,
    )


async def add_with_hub_token(
    m: DownloadManager, token: str, spec: str, options: PlanOptions
) -> int:
    """`DownloadManager.add` with a Hub token of the caller's (a daemon's client): the spec is
    planned with it and the download's transfers to the Hub's origin carry it; the manager's
    own token is not used for it, and nothing of it is stored."""
    from modelfetch.planner import Planner

    m._require_running()
    m._require_store()  # before planning: nothing could be queued
    session, client = hub_parts(m, token)
    planner = Planner(
        session,
        client,
        hub_config=client.config,
        probe_session=m._session_or_fail(),
        holds=m._host_holds,
    )
    return await enqueue(m, await planner.plan(spec, options), hub_token=token)


async def enqueue(
    m: DownloadManager, request: GroupRequest, *, hub_token: str | None = None
) -> int:
    """Add a download; returns its group id. Asking again for something queued or active
    returns the existing id; for something failed or cancelled, re-queues it. `hub_token`: the
    Hub token its transfers carry instead of the manager's (memory only)."""
    m._require_store()
    gid, created = record(m, request, hub_token=hub_token)
    if created is not None:
        await announce(m, [created])
    return gid


def record(
    m: DownloadManager,
    request: GroupRequest,
    *,
    hub_token: str | None = None,
    checks: FolderChecks | None = None,
) -> tuple[int, GroupRecord | None]:
    """The store and memory part of `enqueue`, with no await: its group id, and the new group
    (None when an existing one was returned or re-queued), which `announce` must be given
    next. Without an await it can share one transaction with others (`batch.enqueue_many`),
    and the `checks` of their folders (each looked at once, the free space counted for all)."""
    existing = m.store.find_group(request.dedupe_key())
    if existing is not None:
        group = m._groups.get(existing.id) or m._book.register(existing)
        _remember_token(m, group.id, hub_token)
        status = group.status
        if status in (GroupStatus.QUEUED, GroupStatus.ACTIVE, GroupStatus.PAUSED):
            return group.id, None
        if status is GroupStatus.COMPLETED and all(Path(f.dest).exists() for f in group.files):
            return group.id, None
        again = [
            f
            for f in group.files
            if f.status is not FileStatus.COMPLETED or not Path(f.dest).exists()
        ]
        _check_destinations(m, again, checks)  # what failed it before may have been the folder
        control.requeue(m, group, again)
        return group.id, None

    now = time.time()
    files = [
        FileRecord(
            group_id=0,
            index=i,
            url=fr.url,
            dest=str((fr.dest or request.dest_dir / fr.path).absolute()),
            link=str(fr.link.absolute()) if fr.link else None,
            name=fr.path,
            priority=request.priority,
            expected_size=fr.size,
            bytes_total=fr.size,
            expected_sha256=fr.sha256,
            expected_git_oid=fr.git_oid,
            commit=request.commit,
            created_at=now,
        )
        for i, fr in enumerate(request.files, start=1)
    ]
    _refuse_shared_destinations(m, files)
    # First: a file in the way makes even a stat fail.
    for f, partial in zip(files, _check_destinations(m, files, checks), strict=True):
        f.bytes_done = partial
    group = GroupRecord(
        key=request.dedupe_key(),
        spec=request.spec or request.name,
        name=request.name,
        dest_dir=str(request.dest_dir.absolute()),
        priority=request.priority,
        repo_id=request.repo_id,
        revision=request.revision,
        commit=request.commit,
        quant=request.quant,
        created_at=now,
        files=files,
    )
    with m._batch():
        group = m.store.add_group(group)
        # A new download has no limits of its own yet: known here, not read back per file.
        m._book.limits[group.id] = (None, None)
        _remember_token(m, group.id, hub_token)  # before any file of it can start
        changes = m._queue.add_group(group.id, [f.index for f in group.files], request.priority)
        m.store.set_order(changes)
        for f in group.files:
            f.order_key = changes.get((f.group_id, f.index), f.order_key)
        m._book.register(group)
    return group.id, group


async def announce(m: DownloadManager, groups: Sequence[GroupRecord]) -> None:
    """After `record`: files already at their destinations are adopted, then one
    `group_queued` per new group (published together, with no await in between) and the
    coordinator is woken."""
    for group in groups:
        for f in group.files:
            await adopt_existing(m, f)
    for group in groups:  # no await in between: published in one go
        m._emit(
            ev.GroupQueued(
                group_id=group.id,
                name=group.name,
                files=len(group.files),
                total=m._tallies[group.id].total,
                position=m._book.new_group_position(group.id, group.priority),
            )
        )
    m._wake.set()


def _check_destinations(
    m: DownloadManager, files: list[FileRecord], checks: FolderChecks | None
) -> list[int]:
    """DestinationError (nothing queued) unless every file's folder can be written and its
    file system has room for what is left to fetch; for the CLI and the daemon alike. Returns
    each file's bytes already on disk (`on_disk`), read once for both."""
    from modelfetch.destinations import Needed, check_destinations

    partials: list[int] = []
    needed: list[Needed] = []
    for f in files:
        size = f.expected_size or 0
        try:
            partial = on_disk(m, f)
        except OSError:
            partial = 0
        try:
            present = os.stat(f.dest).st_size  # a finished copy: adopted, not fetched
        except OSError:
            present = 0
        partials.append(partial)
        needed.append(Needed(Path(f.dest), 0 if present == size else max(0, size - partial)))
    check_destinations(needed, checks)
    return partials


def _refuse_shared_destinations(m: DownloadManager, files: list[FileRecord]) -> None:
    """Two live files with one destination would write one `.part` from two streams."""
    taken: dict[str, FileRecord] = {}
    for f in files:
        owners = m._live_dests.get(f.dest)
        other = next(iter(owners.values())) if owners else taken.get(f.dest)
        if other is not None:
            owner = f"download {other.ref}" if other.group_id else f"{other.name!r}"
            raise SpecError(f"{f.dest} is already being written by {owner}")
        taken[f.dest] = f


async def adopt_existing(m: DownloadManager, f: FileRecord) -> None:
    """A file already at its destination with the expected digest is not fetched again.
    Digests are cached by (path, size, mtime), so a multi-GB file is hashed at most once."""
    expected = f.expected_sha256
    dest = Path(f.dest)
    try:
        st = dest.stat()
    except OSError:
        return
    if expected is None or (f.expected_size is not None and st.st_size != f.expected_size):
        return
    digest = m.store.verified_digest(f.dest, st.st_size, st.st_mtime_ns)
    if digest is None:
        digest = await asyncio.to_thread(_sha256_of, dest)
        with m._batch():
            m.store.remember_verified(f.dest, st.st_size, st.st_mtime_ns, digest)
    if digest != expected:
        return
    with m._batch():
        _adopted(m, f, st.st_size, digest)


def _adopted(m: DownloadManager, f: FileRecord, size: int, digest: str) -> None:
    if m._transition(
        f,
        FileStatus.COMPLETED,
        allowed_from=(FileStatus.QUEUED,),
        reason="already present",
        bytes_done=size,
        bytes_total=size,
        sha256=digest,
        finished_at=time.time(),
    ):
        publish_links(m, f)
        m._emit(
            ev.FileCompleted(
                ref=file_ref(f),
                group_id=f.group_id,
                name=f.name,
                path=f.dest,
                sha256=digest,
                size=size,
                verified=True,
            )
        )
        finish_if_done(m, f.group_id)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()
