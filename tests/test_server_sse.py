"""The live event stream (/api/events): ids, replay on reconnect, snapshots, keep-alive, slow
clients and shutdown, against a real daemon on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelfetch.bus import EventBus
from modelfetch.core import events as ev
from modelfetch.manager import DownloadManager
from modelfetch.server import pages as server_pages
from modelfetch.server.routes import events as server_events
from modelfetch.testing.fakehub import SAMPLE_REPO, Fault

from .test_server_api import Daemon, run_daemon

MiB = 1 << 20


@dataclass
class Message:
    id: int | None
    event: str
    data: dict[str, Any]
    raw_id: str | None = None  # the `id:` field as sent ("" resets the client's last id)


@dataclass
class EventReader:
    """Reads SSE messages from a response, keeping comment lines aside."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    async def next(self, timeout: float = 10.0) -> Message:
        fields: dict[str, str] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                if not line:
                    if data:
                        return Message(
                            id=int(fields["id"]) if fields.get("id") else None,
                            event=fields.get("event", "message"),
                            data=json.loads("\n".join(data)),
                            raw_id=fields.get("id"),
                        )
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value

    async def until(self, event: str, timeout: float = 10.0) -> Message:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next()
                if message.event == event:
                    return message


@contextlib.asynccontextmanager
async def open_stream(
    daemon: Daemon, *, last_event_id: int | str | None = None, query: str = ""
) -> AsyncIterator[EventReader]:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with daemon.session.get(f"{daemon.url}/api/events{query}", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield EventReader(response)


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFETCH_TOKEN", raising=False)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with run_daemon(tmp_path) as running:
        yield running


async def add_and_finish(daemon: Daemon, spec: str = SAMPLE_REPO) -> int:
    gid = await daemon.manager.add(spec)
    async with asyncio.timeout(20):
        await daemon.manager.wait([gid])
        # The ticker announces the finished download's queue positions a moment later: let
        # it, so that what a test reads next is not raced by that late event.
        while daemon.manager._tx.positions_dirty:
            await asyncio.sleep(0.02)
    return gid


async def test_a_stream_starts_with_a_snapshot_then_events_with_ids(daemon: Daemon) -> None:
    gid = await add_and_finish(daemon)
    async with open_stream(daemon) as reader:
        snapshot = await reader.next()
        assert reader.retry is not None
        assert snapshot.event == "snapshot"
        assert snapshot.id == daemon.manager.bus.last_seq == snapshot.data["seq"]
        _, listing = await daemon.call("GET", "/api/downloads")
        assert snapshot.data["items"] == listing["downloads"]
        assert [item["id"] for item in snapshot.data["items"]] == [gid]

        second = await daemon.manager.add(f"{SAMPLE_REPO}:Q8_0")
        seen: list[Message] = []
        while not seen or seen[-1].event != "group_finished":
            seen.append(await reader.next())
    ids = [m.id for m in seen]
    assert ids == list(range(snapshot.id + 1, snapshot.id + 1 + len(ids)))
    for message in seen:
        assert message.event == message.data["type"]
        assert message.id == message.data["seq"]
        assert isinstance(ev.from_dict(message.data), ev.Event)
    types = [m.event for m in seen]
    # The ticker may still report the first download's end of queue (queue_changed) after the
    # snapshot; every other event is about the second download, and it starts with its queueing.
    about_second = [m for m in seen if m.event != "queue_changed"]
    assert about_second[0].event == "group_queued" and about_second[0].data["group_id"] == second
    assert {"status_changed", "file_started", "file_completed"} <= set(types)


async def test_last_event_id_replays_exactly_what_was_missed(daemon: Daemon) -> None:
    async with open_stream(daemon) as reader:
        seen_until = (await reader.next()).id
    assert seen_until is not None
    await add_and_finish(daemon)  # events the client was not there for
    missed = daemon.manager.bus.history_since(seen_until)
    assert missed is not None and len(missed) > 5

    for how in ("header", "query"):
        if how == "header":
            stream = open_stream(daemon, last_event_id=seen_until)
        else:
            stream = open_stream(daemon, query=f"?since={seen_until}")
        async with stream as reader:
            replayed = [await reader.next() for _ in missed]
            assert [(m.id, m.event) for m in replayed] == [(e.seq, e.type) for e in missed]
            assert [m.data for m in replayed] == [ev.to_dict(e) for e in missed]
            # Then live events continue the sequence with no snapshot in between.
            daemon.manager.bus.publish(ev.Notice(message="still here"))
            live = await reader.next()
            assert (live.event, live.id) == ("notice", missed[-1].seq + 1)


async def test_a_replay_longer_than_a_stream_s_buffer_comes_whole(daemon: Daemon) -> None:
    """`get -I list` follows from before its batch, and a list of small downloads can finish
    more events while it is planned than a stream buffers: they are replayed, all of them,
    not cut off with `missed` and a snapshot."""
    from modelfetch.server.routes import events as event_routes

    bus = daemon.manager.bus
    since = bus.last_seq
    count = event_routes._SSE_BUFFER + 300
    assert count < 2048  # within the bus's history
    for i in range(count):
        bus.publish(ev.Notice(message=f"n{i}"))
    async with open_stream(daemon, query=f"?since={since}") as reader:
        replayed = [await reader.next() for _ in range(count)]
    assert {m.event for m in replayed} == {"notice"}
    assert [m.id for m in replayed] == list(range(since + 1, since + count + 1))


async def test_an_id_too_old_or_from_an_earlier_run_gets_a_snapshot_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_pages, "STORM_REUSE", 0.0)  # each stream its own snapshot

    def small_history(manager: DownloadManager) -> None:
        manager.bus = EventBus(history=4)

    async with run_daemon(tmp_path, manager_setup=small_history) as daemon:
        await add_and_finish(daemon)
        last = daemon.manager.bus.last_seq
        assert last > 6
        for stale in (1, last + 1000, "not-a-number"):
            async with open_stream(daemon, last_event_id=stale) as reader:
                first = await reader.next()
                assert (first.event, first.id) == ("snapshot", last), stale
                assert len(first.data["items"]) == 1
                daemon.manager.bus.publish(ev.Notice(message="next"))
                after = await reader.next()
                assert first.id is not None and after.id == first.id + 1
                assert after.event == "notice"
                last = after.id


async def test_keep_alive_comments_while_idle(tmp_path: Path) -> None:
    async with run_daemon(tmp_path, keepalive=0.1) as daemon, open_stream(daemon) as reader:
        await reader.next()  # the snapshot
        with pytest.raises(TimeoutError):
            await reader.next(timeout=0.5)
        assert len(reader.comments) >= 2
        assert all(c.startswith(": keep-alive") for c in reader.comments)


async def test_a_burst_goes_out_in_few_writes_every_event_in_order(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events that pile up while the stream writes are sent together (200 small downloads
    make ~1,500 events): fewer writes than events, and still each one, with its id."""
    writes: list[int] = []
    send = server_events._send

    async def counted(response: Any, data: bytes | memoryview) -> None:
        writes.append(len(data))
        await send(response, data)

    monkeypatch.setattr(server_events, "_send", counted)
    async with open_stream(daemon) as reader:
        await reader.until("snapshot")
        writes.clear()
        first = daemon.manager.bus.last_seq + 1
        for n in range(300):  # no chance for the stream's task to run in between
            daemon.manager.bus.publish(ev.Notice(message=f"burst {n}"))
        got = [await reader.next() for _ in range(300)]
    assert [(m.id, m.data["message"]) for m in got] == [
        (first + n, f"burst {n}") for n in range(300)
    ]
    assert 1 <= len(writes) < 30  # a write per 64 KiB at most, not one per event


async def test_a_client_that_falls_behind_gets_missed_then_a_fresh_snapshot(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_events, "_SSE_BUFFER", 4)
    async with open_stream(daemon) as reader:
        await reader.next()
        # A burst with no chance for the stream's task to run in between.
        for n in range(50):
            daemon.manager.bus.publish(ev.Notice(message=f"burst {n}"))
        missed = await reader.next()
        assert missed.event == "missed" and missed.data["count"] == 46
        fresh = await reader.next()
        assert fresh.event == "snapshot" and fresh.id == daemon.manager.bus.last_seq
        daemon.manager.bus.publish(ev.Notice(message="after"))
        after = await reader.next()
        assert (after.event, after.id) == ("notice", fresh.id + 1)


async def test_a_client_that_stops_reading_neither_slows_downloads_nor_stays_forever(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_events, "_SSE_BUFFER", 8)
    monkeypatch.setattr(server_events, "_SSE_WRITE_TIMEOUT", 0.5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", daemon.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n\r\n".encode("ascii")
    )
    await writer.drain()
    try:
        # Far more than the socket buffers hold, while a download runs.
        daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=8 * MiB))
        gid = await daemon.manager.add(SAMPLE_REPO)
        big = "x" * 60_000
        for n in range(300):
            daemon.manager.bus.publish(ev.Notice(message=f"{n} {big}"))
            await asyncio.sleep(0)
        async with asyncio.timeout(20):
            await daemon.manager.wait([gid])
        assert (await daemon.manager.group_view(gid)).status == "completed"
        # Its socket stayed full for longer than the write timeout, so it was dropped:
        # reading now reaches the end of the connection instead of a live stream.
        await asyncio.sleep(4 * server_events._SSE_WRITE_TIMEOUT)
        async with asyncio.timeout(10):
            while await reader.read(1 << 20):
                pass
    finally:
        writer.close()


async def test_streams_end_cleanly_when_the_server_stops(daemon: Daemon) -> None:
    async with open_stream(daemon) as first, open_stream(daemon) as second:
        await first.next()
        await second.next()
        daemon.task.cancel()
        async with asyncio.timeout(2):
            for reader in (first, second):
                with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                    await reader.next()
            with contextlib.suppress(asyncio.CancelledError):
                await daemon.task
    assert not (daemon.home / "daemon.json").exists()


async def test_streams_end_when_the_manager_shuts_down(daemon: Daemon) -> None:
    async with open_stream(daemon) as reader:
        await reader.next()
        await daemon.manager.shutdown()
        async with asyncio.timeout(5):
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                await reader.next()
    status, error = await daemon.call("GET", "/api/events")
    assert (status, error["error"]["kind"]) == (503, "unavailable")


async def test_the_stream_takes_the_token_in_the_query(tmp_path: Path) -> None:
    token = "sse-token-0123456789abcdef"
    async with run_daemon(tmp_path, token=token) as daemon, aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{daemon.url}/api/events") as response:
            assert response.status == 401
        async with anonymous.get(f"{daemon.url}/api/events?token={token}") as response:
            assert response.status == 200
            message = await EventReader(response).next()
            assert message.event == "snapshot"


async def test_clients_connecting_together_share_one_snapshot_and_miss_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_daemon(tmp_path) as daemon:
        await add_and_finish(daemon)
        async with open_stream(daemon) as one:
            first = await one.next()
            progress = ev.GroupProgress(
                group_id=1,
                name="x",
                downloaded=1,
                total=2,
                speed=None,
                eta=None,
                files_done=0,
                files_total=1,
            )
            daemon.manager.bus.publish(progress)
            async with open_stream(daemon) as two:
                shared = await two.next()
                assert (shared.event, shared.id) == ("snapshot", first.id)
                between = await two.next()  # replayed: published after the shared snapshot
                assert between.event == "group_progress"
                assert first.id is not None and between.id == first.id + 1
            # A change of state: a client of the same storm (within STORM_REUSE) still shares
            # the snapshot and gets the change replayed right after it, so it is never stale...
            daemon.manager.bus.publish(ev.Notice(message="state changed"))
            monkeypatch.setattr(server_pages, "STORM_REUSE", 60.0)
            async with open_stream(daemon) as three:
                again = await three.next()
                assert (again.event, again.id) == ("snapshot", first.id)
                replayed = [await three.next(), await three.next()]
                assert [(m.event, m.id) for m in replayed] == [
                    ("group_progress", first.id + 1),
                    ("notice", first.id + 2),
                ]
            # ... and later than that, the next client gets a fresh snapshot.
            monkeypatch.setattr(server_pages, "STORM_REUSE", 0.0)
            async with open_stream(daemon) as four:
                fresh = await four.next()
                assert fresh.event == "snapshot"
                assert fresh.id == daemon.manager.bus.last_seq


async def test_types_narrows_a_stream_to_the_events_asked_for(daemon: Daemon) -> None:
    async with open_stream(daemon, query="?types=status_changed&types=group_finished") as reader:
        assert (await reader.next()).event == "snapshot"  # the snapshot comes all the same
        gid = await add_and_finish(daemon)
        kinds: list[str] = []
        while not kinds or kinds[-1] != "group_finished":
            message = await reader.next()
            kinds.append(message.event)
            assert message.data["group_id"] == gid
        assert set(kinds) == {"status_changed", "group_finished"}
        assert kinds.count("status_changed") >= 2  # queued -> active -> completed, per file
    async with open_stream(daemon, query="?types=group_finished,notice") as reader:
        assert (await reader.next()).event == "snapshot"
    async with daemon.session.get(f"{daemon.url}/api/events?types=group_finished,nope") as bad:
        assert bad.status == 422
        assert "query.types" in (await bad.json())["error"]["message"]
    async with daemon.session.get(f"{daemon.url}/api/openapi.json") as answer:
        document = await answer.json()
    parameters = document["paths"]["/api/events"]["get"]["parameters"]
    types = next(p for p in parameters if p["name"] == "types")
    assert set(types["schema"]["items"]["enum"]) == set(ev.EVENT_TYPES)  # every type, named
