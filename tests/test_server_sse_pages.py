"""The event stream's paged start-up snapshot against a real daemon on loopback (SQLite store):
pages in order and then the events after the snapshot's seq, a change while the pages go out,
resuming with Last-Event-ID, pages shared by clients and by the listing, and what a plain client
(no dashboard) rebuilds from the stream. Pages are 2 downloads here, so 5 make 3 pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelfetch.core import events as ev
from modelfetch.remote import RemoteManager, connect
from modelfetch.server import pages as server_pages
from modelfetch.server.pages import PageCache
from modelfetch.testing.fakehub import RepoFile

from .test_server_api import Daemon, run_daemon, slow_cdn
from .test_server_sse import EventReader, Message, open_stream

KiB = 1 << 10
SNAPSHOT_KINDS = ("snapshot", "snapshot_page")


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFETCH_TOKEN", raising=False)


@pytest.fixture(autouse=True)
def _small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_pages, "PAGE_SIZE", 2)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with run_daemon(tmp_path) as running:
        yield running


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The `after` of every page the daemon reads from the manager (the rest were shared)."""
    seen: list[int | None] = []
    real = PageCache._read

    async def counted(self: PageCache, after: int | None, step: int) -> server_pages.Page:
        seen.append(after)
        return await real(self, after, step)

    monkeypatch.setattr(PageCache, "_read", counted)
    return seen


async def queue_paused(daemon: Daemon, count: int) -> list[int]:
    """`count` one-file downloads, all paused, and the daemon quiet."""
    slow_cdn(daemon.hub, rate=16 * KiB)
    ids = []
    for n in range(count):
        daemon.hub.add_repo(f"acme/tiny-{n}", [RepoFile("tiny.gguf", size=256 * KiB, seed=n)])
        ids.append(await daemon.manager.add(f"acme/tiny-{n}/tiny.gguf"))
    await daemon.manager.pause_all()
    async with asyncio.timeout(10):
        while {v.status for v in await daemon.manager.snapshot()} != {"paused"}:
            await asyncio.sleep(0.02)
        while daemon.manager._tx.positions_dirty:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the last positions' event, announced a tick later
    return ids


async def read_snapshot(reader: EventReader) -> list[Message]:
    """A snapshot's messages, first to last (the one whose `next` is null)."""
    messages = [await reader.next()]
    assert messages[0].event == "snapshot", messages[0]
    while messages[-1].data["next"] is not None:
        messages.append(await reader.next())
        assert messages[-1].event == "snapshot_page", messages[-1]
    return messages


async def full_listing(daemon: Daemon) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    path = "/api/downloads"
    while True:
        status, body = await daemon.call("GET", path)
        assert status == 200, body
        found += body["downloads"]
        if body["next"] is None:
            return found
        path = f"/api/downloads?after={body['next']}"


class PlainClient:
    """What a client that is not the dashboard does with the stream: take the snapshot's pages
    as they come, then apply each event after it in order (here: file statuses)."""

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {}
        self.seq = 0  # the snapshot's
        self.consistent_at = 0  # the largest as_of: the view is one moment once applied so far
        self.applied = 0  # the seq of the last event applied

    def take(self, message: Message) -> None:
        data = message.data
        if message.event == "snapshot":
            self.items, self.seq = {}, data["seq"]
        if message.event in SNAPSHOT_KINDS:
            assert data["seq"] == self.seq
            self.items.update((item["id"], item) for item in data["items"])
            self.consistent_at = max(self.consistent_at, data["as_of"])
            return
        assert message.id is not None and message.id > max(self.seq, self.applied)
        self.applied = message.id
        event = ev.from_dict(data)
        if isinstance(event, ev.StatusChanged):
            for f in self.items[event.group_id]["files"]:
                if f["ref"] == event.ref:
                    f["status"] = event.status

    def statuses(self) -> dict[int, list[str]]:
        return {gid: [f["status"] for f in g["files"]] for gid, g in sorted(self.items.items())}


def statuses_of(listing: list[dict[str, Any]]) -> dict[int, list[str]]:
    return {g["id"]: [f["status"] for f in g["files"]] for g in listing}


async def test_a_long_list_comes_in_pages_then_the_events_after_it(daemon: Daemon) -> None:
    ids = await queue_paused(daemon, 5)
    async with open_stream(daemon) as reader:
        messages = await read_snapshot(reader)
        seq = messages[0].data["seq"]
        assert seq == daemon.manager.bus.last_seq
        assert [[g["id"] for g in m.data["items"]] for m in messages] == [
            ids[0:2],
            ids[2:4],
            ids[4:5],
        ]
        assert [m.data["next"] for m in messages] == [ids[1], ids[3], None]
        # Only the last message has the snapshot's id: a client cut off before it reconnects
        # with no Last-Event-ID (the empty id resets it) and gets a whole snapshot again.
        assert [m.raw_id for m in messages] == ["", "", str(seq)]
        assert all(m.data["seq"] == seq and m.data["as_of"] == seq for m in messages)
        items = [g for m in messages for g in m.data["items"]]
        assert items == await full_listing(daemon)

        daemon.manager.bus.publish(ev.Notice(message="after the pages"))
        after = await reader.next()
        assert (after.event, after.id) == ("notice", seq + 1)


async def test_a_change_while_the_pages_go_out_is_not_lost(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await queue_paused(daemon, 5)
    real = PageCache._read
    changed: list[int] = []

    async def change_then_read(self: PageCache, after: int | None, step: int) -> server_pages.Page:
        if after == ids[1] and not changed:
            # Page 1 (ids 0, 1) is on its way; page 3 (id 4) is not read yet.
            changed.append(daemon.manager.bus.last_seq)
            await daemon.manager.cancel(ids[0])
            await daemon.manager.cancel(ids[4])
        return await real(self, after, step)

    monkeypatch.setattr(PageCache, "_read", change_then_read)
    client = PlainClient()
    async with open_stream(daemon) as reader:
        messages = await read_snapshot(reader)
        for message in messages:
            client.take(message)
        assert changed == [client.seq]
        # The first page went out before the change, the last one was read after it.
        assert messages[0].data["items"][0]["status"] == "paused"
        assert messages[2].data["items"][0]["status"] == "cancelled"
        assert messages[2].data["as_of"] > client.seq
        # Then every event after the snapshot's seq, in order: the cancels among them.
        finished: set[int] = set()
        while finished != {ids[0], ids[4]} or client.applied < client.consistent_at:
            message = await reader.next()
            assert message.event not in SNAPSHOT_KINDS
            client.take(message)
            if message.event == "group_finished":
                finished.add(message.data["group_id"])
    assert client.statuses() == statuses_of(await full_listing(daemon))
    assert client.statuses()[ids[0]] == ["cancelled"]
    assert client.statuses()[ids[4]] == ["cancelled"]


async def test_last_event_id_after_a_paged_snapshot_resumes_without_one(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_pages, "STORM_REUSE", 0.0)  # the last stream reads afresh
    await queue_paused(daemon, 5)
    async with open_stream(daemon) as reader:
        messages = await read_snapshot(reader)
    last = messages[-1].id
    assert last is not None
    for n in range(3):
        daemon.manager.bus.publish(ev.Notice(message=f"while away {n}"))
    async with open_stream(daemon, last_event_id=last) as reader:
        replayed = [await reader.next() for _ in range(3)]
        assert [(m.event, m.id) for m in replayed] == [("notice", last + n) for n in (1, 2, 3)]
    # Cut off mid-snapshot, a client holds no id (the pages reset it): a whole snapshot again.
    async with open_stream(daemon) as reader:
        again = await read_snapshot(reader)
        assert again[0].data["seq"] == last + 3 and len(again) == 3


async def test_clients_and_the_listing_share_the_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: list[int | None]
) -> None:
    monkeypatch.setattr(server_pages, "LIST_REUSE", 60.0)  # however slow this machine is
    async with run_daemon(tmp_path) as daemon:
        await share_the_pages(daemon, reads)


async def share_the_pages(daemon: Daemon, reads: list[int | None]) -> None:
    ids = await queue_paused(daemon, 5)
    async with open_stream(daemon) as one, open_stream(daemon) as two:
        first = await read_snapshot(one)
        second = await read_snapshot(two)
        assert [m.data for m in first] == [m.data for m in second]
        # The listing's pages of the same size are the same pages, with their seq.
        _, page = await daemon.call("GET", "/api/downloads?limit=2")
        assert page == {
            "seq": first[0].data["seq"],
            "downloads": first[0].data["items"],
            "next": ids[1],
        }
    assert reads == [None, ids[1], ids[3]]
    # A change of state is never hidden behind a shared page.
    await daemon.manager.cancel(ids[0])
    _, page = await daemon.call("GET", "/api/downloads?limit=2")
    assert page["downloads"][0]["status"] == "cancelled"
    assert reads[-1] is None and len(reads) == 4


async def test_a_storm_of_clients_shares_the_pages_across_changes_and_sees_them_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: list[int | None]
) -> None:
    """Clients connecting within STORM_REUSE of each other share every page even when the
    state changed in between (cancels here; a moving queue's `queue_changed` in practice):
    the later one starts at the shared snapshot's seq and gets the changes replayed, and ends
    where a fresh listing is. Beyond REPLAY_MAX events since, a fresh page is read."""
    monkeypatch.setattr(server_pages, "STORM_REUSE", 60.0)  # however slow this machine is
    async with run_daemon(tmp_path) as daemon:
        ids = await queue_paused(daemon, 5)
        reads.clear()
        async with open_stream(daemon) as one:
            await read_snapshot(one)
        assert reads == [None, ids[1], ids[3]]
        seq = daemon.manager.bus.last_seq
        await daemon.manager.cancel(ids[0])
        await daemon.manager.cancel(ids[4])
        client = PlainClient()
        async with open_stream(daemon) as two:
            for message in await read_snapshot(two):
                client.take(message)
            assert client.seq == seq and reads == [None, ids[1], ids[3]]  # nothing read again
            assert client.statuses()[ids[0]] == ["paused"]  # the page as it was...
            finished: set[int] = set()
            while finished != {ids[0], ids[4]}:
                message = await two.next()
                client.take(message)  # ... then the cancels, replayed in order
                if message.event == "group_finished":
                    finished.add(message.data["group_id"])
        assert client.statuses() == statuses_of(await full_listing(daemon))
        monkeypatch.setattr(server_pages, "REPLAY_MAX", 1)
        async with open_stream(daemon) as three:
            fresh = await read_snapshot(three)
        assert fresh[0].data["seq"] == daemon.manager.bus.last_seq  # not the old snapshot


async def test_the_listing_reads_its_next_page_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: list[int | None]
) -> None:
    """A page a listing asked for is read again in the background once 3/4 of its reuse old,
    so the next listing does not wait for a read; and only then: nobody lists, nothing read."""
    monkeypatch.setattr(server_pages, "LIST_REUSE", 2.0)
    async with run_daemon(tmp_path) as daemon:
        await queue_paused(daemon, 3)
        reads.clear()
        _, first = await daemon.call("GET", "/api/downloads?limit=2")
        assert reads == [None]
        async with asyncio.timeout(10):
            while len(reads) < 2:  # due 1.5 s (3/4 of the reuse) after the first read
                await asyncio.sleep(0.02)
        _, second = await daemon.call("GET", "/api/downloads?limit=2")
        assert reads == [None, None]  # answered from the page read meanwhile
        assert first["downloads"] == second["downloads"]
        await asyncio.sleep(2.5)  # the second listing's own refresh, then nothing more
        assert reads == [None, None, None]


async def test_remote_wait_reads_every_page(daemon: Daemon) -> None:
    ids = await queue_paused(daemon, 5)
    found = await connect(daemon.home)
    assert found is not None
    remote: RemoteManager
    async with found as remote:
        assert len(await remote.snapshot()) == 5
        await remote.resume(ids[4])  # on the last page
        waiter = asyncio.create_task(remote.wait([ids[4]]))
        await asyncio.sleep(0.3)
        assert not waiter.done()  # queued or active on page 3: not settled
        await remote.pause(ids[4])
        async with asyncio.timeout(10):
            await waiter
