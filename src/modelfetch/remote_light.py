"""A small blocking client of the daemon on the standard library alone (a socket and json).

`modelfetch get -I list` with a daemon running hands the whole list over in one request and then
follows the event stream. On that path the command does no work of its own, so what it imports
is most of what it costs: aiohttp alone takes longer to import than the daemon takes to fetch
200 small files. This client is what that path uses instead of `remote.RemoteManager`; it finds
the daemon the same way (`<home>/daemon.json`, a health check that must name the same pid) and
raises the same ModelfetchError subclasses for the daemon's errors.

The daemon's bearer token (from daemon.json) goes only to the daemon's own URL; a Hub token goes
only to a daemon on this machine, as with RemoteManager.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from modelfetch.core.errors import StateError
from modelfetch.light_http import Connection, Response
from modelfetch.remote_trust import is_loopback_address

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from modelfetch.remote_codec import SSEMessage

__all__ = ["BATCH_SIZE", "DaemonClient", "EventReader", "Pending", "find_daemon"]

BATCH_SIZE = 1000
"""Specs per `POST /api/downloads:batch`: the daemon's bound (`manager.batch.MAX_BATCH`, which
a test checks this against; importing it would import the manager)."""

DAEMON_FILE = "daemon.json"
_HEALTH_TIMEOUT = 1.0
_REQUEST_TIMEOUT = 300.0  # planning a long list on the daemon can take a while (Hub calls)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_daemon_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    if not isinstance(data.get("pid"), int):
        return None
    return data


def live_daemon_file(home: Path) -> tuple[Path, int, str, str | None] | None:
    """(its path, pid, url, token) of the daemon file of `home` whose process is alive, or None;
    a file whose process is dead is removed. Whether it answers is the caller's to check (this
    client's way, or `remote.connect`'s)."""
    path = home.expanduser().resolve() / DAEMON_FILE
    info = _read_daemon_file(path)
    if info is None:
        return None
    pid: int = info["pid"]
    if not _pid_alive(pid):
        path.unlink(missing_ok=True)
        return None
    token = info.get("token") if isinstance(info.get("token"), str) else None
    return path, pid, str(info["url"]), token


def find_daemon(home: Path, *, timeout: float = _HEALTH_TIMEOUT) -> DaemonClient | None:
    """The daemon serving `home`, or None when none runs; a file left by a daemon that is gone
    (dead pid, or nothing listening) is removed, as `remote.connect` does."""
    found = live_daemon_file(home)
    if found is None:
        return None
    path, pid, url, token = found
    client = DaemonClient(url, token=token)
    try:
        status, health = client.request("GET", "/api/health", timeout=timeout)
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # the pid was reused by another process after a crash
        return None
    except (OSError, ValueError):
        return None  # alive but not answering: leave its file alone
    if status != 200 or not isinstance(health, dict) or health.get("pid") != pid:
        return None
    return client


class DaemonClient:
    """Requests to one daemon: a JSON body in, the decoded JSON body out."""

    def __init__(self, url: str, *, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise StateError(f"cannot talk to a daemon at {url!r} (http://host:port only)")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._token = token

    def __repr__(self) -> str:
        return f"DaemonClient({self.url!r})"

    @property
    def on_this_machine(self) -> bool:
        """Whether a Hub token may be sent along (it would cross a network in the clear)."""
        host = self._host.lower()
        return host == "localhost" or is_loopback_address(host)

    def _connection(self, timeout: float | None) -> Connection:
        return Connection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: dict[str, str] | None, *, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if extra:
            headers.update(extra)
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = _REQUEST_TIMEOUT,
    ) -> tuple[int, Any]:
        """(status, decoded body or None). Raises OSError when the daemon cannot be reached."""
        conn = self._sent(method, path, body, headers, timeout)
        try:
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, _decoded(raw)

    def _sent(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None, timeout: float
    ) -> Connection:
        """A connection with the request sent on it (closed again if sending failed)."""
        payload = None if method == "GET" else json.dumps({} if body is None else body).encode()
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=payload, headers=self._headers(headers, body=True))
        except BaseException:
            conn.close()
            raise
        return conn

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> Pending:
        """Send a request now and read its answer later (`Pending.answer`): the daemon works
        on a long batch while this process gets on with what it has to do meanwhile."""
        try:
            conn = self._sent(method, path, body, headers, _REQUEST_TIMEOUT)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        return Pending(self, conn)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The decoded body of a success; a daemon error as its ModelfetchError (ValueError
        for a body it refused as invalid), an unreachable daemon as StateError."""
        return self.send(method, path, body, headers=headers).answer()

    def _unreachable(self, exc: Exception) -> StateError:
        return StateError(f"the daemon at {self.url} is not answering: {exc}")

    def downloads(self, ids: Collection[int] | None = None) -> list[dict[str, Any]]:
        """Every download, page by page as the daemon lists them (JSON views); with `ids`,
        those of them that exist. The listing is in id order, so that walk starts just
        before the lowest and ends once each was seen: a `get` reloading its own views
        reads a page of a queue whose history holds 10,000, not ten."""
        found: list[dict[str, Any]] = []
        left = None if ids is None else set(ids)
        if left is not None and not left:
            return found
        path = "/api/downloads" if left is None else f"/api/downloads?after={max(0, min(left) - 1)}"
        while True:
            data = self.call("GET", path)
            for item in data["downloads"]:
                if left is None:
                    found.append(item)
                elif int(item["id"]) in left:
                    found.append(item)
                    left.discard(int(item["id"]))
            after = data.get("next")
            if after is None or (left is not None and not left):
                return found
            path = f"/api/downloads?after={int(after)}"

    def open_events(self, since: int | None, types: Sequence[str] = ()) -> EventReader:
        """The event stream from after `since` (a replay of what was published since then, or
        a snapshot first when the daemon no longer has it), read by a thread of its own; with
        `types`, only events of those types (a daemon older than that filter sends all)."""
        conn = self._connection(None)
        query = [] if since is None else [f"since={int(since)}"]
        if types:
            query.append("types=" + ",".join(types))
        path = "/api/events" + ("?" + "&".join(query) if query else "")
        headers = self._headers({"Accept": "text/event-stream"}, body=False)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise StateError(f"the daemon at {self.url} is not answering: {exc}") from exc
        if response.status >= 400:
            raw = response.read()
            conn.close()
            raise _error(response.status, _decoded(raw))
        return EventReader(conn, response)


class Pending:
    """A request sent, its answer not read yet."""

    def __init__(self, client: DaemonClient, conn: Connection) -> None:
        self._client = client
        self._conn = conn

    def answer(self) -> Any:
        """As `DaemonClient.call`: the decoded body, or the daemon's error raised. A Ctrl-C
        while waiting leaves the connection open, so the answer can still be read."""
        try:
            response = self._conn.getresponse()
            raw = response.read()
        except OSError as exc:
            self._conn.close()
            raise self._client._unreachable(exc) from exc
        self._conn.close()
        data = _decoded(raw)
        if response.status >= 400:
            raise _error(response.status, data)
        return data


def _error(status: int, data: Any) -> Exception:
    # The codec rebuilds views, which this path needs only once the list is queued.
    from modelfetch.remote_codec import error_from_response

    return error_from_response(status, data)


def _decoded(raw: bytes) -> Any:
    """A response body as JSON, or None when it is empty or not JSON (an error then says
    what its status alone says)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


_END = None  # what the reader thread puts last: the stream ended


class EventReader:
    """Server-Sent Events from one response, parsed by a daemon thread into a queue, so the
    caller can wait for the next one with a timeout (its display ticks meanwhile). The stream
    ending (the daemon stopped, or `close`) shows as `ended`.

    The thread hands over every message of one read together: the daemon writes the events
    that piled up in one go, 200 small downloads make ~1,500 of them, and a queue hand-off
    per message (a lock and a wake-up of the other thread each) cost the client more than
    reading them."""

    def __init__(self, conn: Connection, response: Response):
        self._conn = conn
        self._response = response
        self._queue: queue.Queue[list[SSEMessage] | None] = queue.Queue()
        self._ready: collections.deque[SSEMessage] = collections.deque()
        self.ended = False
        self._thread = threading.Thread(target=self._read, name="modelfetch-sse", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        from modelfetch.remote_codec import SSEParser

        parser = SSEParser()
        try:
            while chunk := self._response.read1(1 << 16):
                messages = parser.feed(chunk)
                if messages:
                    self._queue.put(messages)
        except Exception:
            pass  # daemon went away: either way the stream has ended
        finally:
            self._queue.put(_END)

    def next(self, timeout: float) -> SSEMessage | None:
        """The next message, or None after `timeout` seconds (or once the stream ended)."""
        if self._ready:
            return self._ready.popleft()
        if self.ended:
            return None
        try:
            messages = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if messages is _END:
            self.ended = True
            return None
        self._ready.extend(messages)
        return self._ready.popleft()

    def close(self) -> None:
        # Shut the socket down first: the reader thread is blocked in a read holding the
        # response's buffer lock, and closing the response would wait for that read to return
        # (the next keep-alive comment, up to 15 s later). After a shutdown it returns at once.
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=1.0)
        self._conn.close()
