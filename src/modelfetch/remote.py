"""The daemon's client: the `Backend` methods over its HTTP API.

`connect(home)` finds a running daemon through `<home>/daemon.json`; `RemoteManager` then offers
the same async methods, return types and exceptions as a `DownloadManager` in this process, so a
front end never needs to know which one it drives. Errors come back as the same ModelfetchError
subclasses (the API sends each error's `kind`); a request body the daemon refuses as invalid is a
ValueError, like the manager's own argument checks; a daemon that cannot be reached is a
StateError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from modelfetch.core import events as ev
from modelfetch.core.errors import ModelfetchError, StateError
from modelfetch.core.models import KEEP, ItemRef, Keep
from modelfetch.core.quant import QuantGroup
from modelfetch.remote_codec import (
    HUB_TOKEN_HEADER,
    SSEParser,
    batch_item_error,
    client_hub_token,
    error_from_response,
    fleet_view_of,
    group_view_of,
    is_loopback_address,
    quant_group_of,
)
from modelfetch.remote_light import live_daemon_file
from modelfetch.views import FleetView, GroupView

if TYPE_CHECKING:
    import aiohttp

# aiohttp is imported where a request is made, not here: every command looks for a daemon, and
# when none runs (the usual case) finding that out must not cost the HTTP client's import.

__all__ = ["RemoteManager", "connect", "error_from_response"]

_HEALTH_TIMEOUT = 1.0
_REQUEST_TOTAL = 300.0
_CONNECT_TIMEOUT = 5.0

Ref = str | int | ItemRef


# --------------------------------------------------------------------------------- finding it


async def connect(home: Path, *, health_timeout: float = _HEALTH_TIMEOUT) -> RemoteManager | None:
    """The daemon serving `home`, or None when none runs. A file left by a daemon that is gone
    (its process is dead, or nothing listens at its URL) is removed. The result is not entered
    yet: use it as `async with`."""
    found = live_daemon_file(home)
    if found is None:
        return None
    path, pid, url, token = found
    if not await _listening(url, health_timeout):
        # Nothing listens there: the pid was reused by another process after a crash.
        path.unlink(missing_ok=True)
        return None
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(
                f"{url}/api/health", timeout=aiohttp.ClientTimeout(total=health_timeout)
            ) as response,
        ):
            health = await response.json() if response.status == 200 else None
    except aiohttp.ClientConnectorError:
        path.unlink(missing_ok=True)
        return None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None  # alive but not answering: leave its file alone
    if not isinstance(health, dict) or health.get("pid") != pid:
        return None
    return RemoteManager(url, token=token)


async def _listening(url: str, within: float) -> bool:
    """False if a TCP connection to `url`'s host and port is refused (nobody listens there);
    True if it is accepted, and when in doubt (a timeout, an unparsable URL): the health
    check then decides."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return True
    if not host:
        return True
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return False
    except OSError:  # a timeout, an unreachable or unknown host: the health check decides
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# ------------------------------------------------------------------------------- the client


def _add_body(
    quant: str | None,
    revision: str | None,
    include: Iterable[str],
    exclude: Iterable[str],
    layout: Any,
    models_dir: Path | None,
    dest_dir: Path | None,
    priority: int,
) -> dict[str, Any]:
    """The options of an add, as the API takes them (paths absolute: the daemon's working
    directory means nothing here)."""
    return {
        "quant": quant,
        "revision": revision,
        "include": list(include),
        "exclude": list(exclude),
        "layout": str(layout.value if hasattr(layout, "value") else layout),
        "models_dir": str(models_dir.expanduser().absolute()) if models_dir else None,
        "dest_dir": str(dest_dir.expanduser().absolute()) if dest_dir else None,
        "priority": priority,
    }


def _ref(ref: Ref) -> ItemRef:
    # Parsed here as the manager would, so a malformed id is the same SpecError.
    return ref if isinstance(ref, ItemRef) else ItemRef.parse(ref)


class RemoteManager:
    """A running daemon, driven like a DownloadManager (the `backend.Backend` methods).

    Owns an aiohttp session while entered (`async with`)."""

    def __init__(self, url: str, *, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RemoteManager({self.url!r})"

    async def __aenter__(self) -> Self:
        if self._session is None:
            headers = {"Accept": "application/json"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=_REQUEST_TOTAL, sock_connect=_CONNECT_TIMEOUT)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -------------------------------------------------------------------------- plumbing

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the RemoteManager is not open (use `async with`)")
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        import aiohttp

        session = self._require_session()
        kwargs: dict[str, Any] = {"params": params}
        if headers:
            kwargs["headers"] = headers
        if method != "GET":
            kwargs["json"] = body if body is not None else {}
        try:
            async with session.request(method, f"{self.url}{path}", **kwargs) as response:
                raw = await response.read()
                data: Any = None
                if raw:
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        data = None
                if response.status >= 400:
                    raise error_from_response(response.status, data)
                return data
        except aiohttp.ClientError as exc:
            raise StateError(f"the daemon at {self.url} is not answering: {exc}") from exc

    # --------------------------------------------------------------------------- backend

    async def add(
        self,
        spec: str,
        *,
        quant: str | None = None,
        revision: str | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        layout: Any = "plain",
        models_dir: Path | None = None,
        dest_dir: Path | None = None,
        priority: int = 0,
        hub_token: str | None = None,
    ) -> int:
        """Queue `spec` on the daemon. The Hub token of this client (`hub_token`, else
        HF_TOKEN / HUGGING_FACE_HUB_TOKEN in its environment) travels with this one request
        when the daemon is on this machine: the daemon plans and fetches this download with it
        and keeps it in memory only. To a daemon elsewhere it is not sent (plain http): that
        daemon uses its own token (`sends_hub_token` tells the caller which)."""
        body = _add_body(quant, revision, include, exclude, layout, models_dir, dest_dir, priority)
        data = await self._call(
            "POST", "/api/downloads", body={"spec": spec, **body}, headers=self._hub(hub_token)
        )
        return int(data["id"])

    async def add_many(
        self,
        specs: Sequence[str],
        *,
        quant: str | None = None,
        revision: str | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        layout: Any = "plain",
        models_dir: Path | None = None,
        dest_dir: Path | None = None,
        priority: int = 0,
        hub_token: str | None = None,
    ) -> list[int | ModelfetchError]:
        """`add` for every spec with the same options, in one request per BATCH_SIZE specs
        (`POST /api/downloads:batch`): per spec, its group id or the error it got alone."""
        from modelfetch.remote_light import BATCH_SIZE

        body = _add_body(quant, revision, include, exclude, layout, models_dir, dest_dir, priority)
        out: list[int | ModelfetchError] = []
        for start in range(0, len(specs), BATCH_SIZE):
            part = list(specs[start : start + BATCH_SIZE])
            data = await self._call(
                "POST",
                "/api/downloads:batch",
                body={"specs": part, **body},
                headers=self._hub(hub_token),
            )
            for item in data["results"]:
                if item.get("error") is not None:
                    out.append(batch_item_error(item))
                else:
                    out.append(int(item["download"]["id"]))
        return out

    def _hub(self, hub_token: str | None) -> dict[str, str] | None:
        token = hub_token or client_hub_token()
        return {HUB_TOKEN_HEADER: token} if token and self.sends_hub_token else None

    @property
    def sends_hub_token(self) -> bool:
        """Whether `add` hands this client's Hub token to the daemon: only to one on this
        machine (the request would carry it in the clear across a network otherwise)."""
        host = (urlsplit(self.url).hostname or "").lower()
        return host == "localhost" or is_loopback_address(host)

    async def quants(self, repo: str, revision: str | None = None) -> list[QuantGroup]:
        params = {"repo": repo}
        if revision is not None:
            params["revision"] = revision
        data = await self._call("GET", "/api/quants", params=params)
        return [quant_group_of(q) for q in data["quants"]]

    async def _act(self, ref: Ref, action: str, body: dict[str, Any] | None = None) -> None:
        await self._call("POST", f"/api/downloads/{_ref(ref)}/{action}", body=body)

    async def pause(self, ref: Ref) -> None:
        await self._act(ref, "pause")

    async def resume(self, ref: Ref) -> None:
        await self._act(ref, "resume")

    async def cancel(self, ref: Ref) -> None:
        await self._act(ref, "cancel")

    async def retry(self, ref: Ref) -> None:
        await self._act(ref, "retry")

    async def move(self, ref: Ref, position: int) -> None:
        await self._act(ref, "move", {"position": position})

    async def set_priority(self, ref: Ref, priority: int) -> None:
        await self._act(ref, "priority", {"priority": priority})

    async def pause_all(self) -> None:
        await self._call("POST", "/api/pause-all")

    async def resume_all(self) -> None:
        await self._call("POST", "/api/resume-all")

    async def forget(self, ref: Ref) -> None:
        # The manager forgets the whole download a file id belongs to; so does this.
        await self._call("DELETE", f"/api/downloads/{_ref(ref).group_id}")

    async def forget_finished(self) -> list[int]:
        data = await self._call("POST", "/api/forget-finished")
        return [int(i) for i in data["forgotten"]]

    async def set_limits(
        self,
        *,
        max_active: int | None = None,
        rate_limit: int | None = None,
        max_connections: int | None = None,
        max_connections_per_host: int | None = None,
        connections_per_file: int | None = None,
    ) -> None:
        body = {
            "max_active": max_active,
            "rate_limit": rate_limit,
            "max_connections": max_connections,
            "max_connections_per_host": max_connections_per_host,
            "connections_per_file": connections_per_file,
        }
        await self._call("PUT", "/api/limits", body=body)

    async def set_rate_limit(self, ref: Ref, bytes_per_s: int | None) -> None:
        """Cap one download's bandwidth (None or 0: no cap of its own), as the manager's."""
        await self._download_limits(ref, {"rate_limit": bytes_per_s})

    async def set_connections(self, ref: Ref, connections: int | None) -> None:
        """Connections per file for one download (None: the global setting)."""
        await self._download_limits(ref, {"connections": connections})

    async def fleet(self) -> FleetView:
        return fleet_view_of(await self._call("GET", "/api/fleet"))

    async def set_fleet_limits(
        self,
        *,
        max_active: int | Keep | None = KEEP,
        max_connections_per_host: int | Keep | None = KEEP,
    ) -> FleetView:
        caps = {"max_active": max_active, "max_connections_per_host": max_connections_per_host}
        body = {name: cap for name, cap in caps.items() if cap is not KEEP}
        return fleet_view_of(await self._call("PUT", "/api/fleet", body=body))

    async def _download_limits(self, ref: Ref, body: dict[str, Any]) -> None:
        await self._call("PUT", f"/api/downloads/{_ref(ref).group_id}/limits", body=body)

    async def orphan_partials(self) -> list[Path]:
        data = await self._call("GET", "/api/orphan-partials")
        return [Path(p) for p in data["paths"]]

    async def remove_orphan_partials(self) -> list[Path]:
        data = await self._call("DELETE", "/api/orphan-partials")
        return [Path(p) for p in data["paths"]]

    async def snapshot(self) -> list[GroupView]:
        """Every download, page by page as the daemon lists them."""
        views: list[GroupView] = []
        path = "/api/downloads"
        while True:
            data = await self._call("GET", path)
            views += [group_view_of(g) for g in data["downloads"]]
            after = data.get("next")
            if after is None:
                return views
            path = f"/api/downloads?after={int(after)}"

    async def group_view(self, ref: Ref) -> GroupView:
        return group_view_of(await self._call("GET", f"/api/downloads/{_ref(ref)}"))

    async def wait(self, group_ids: Iterable[int]) -> None:
        """Until every given download is settled (nothing queued, active or waiting to retry;
        paused counts as settled), as DownloadManager.wait. Returns when the daemon stops."""
        wanted = {int(g) for g in group_ids}
        if not wanted:
            return
        statuses: dict[int, dict[str, str]] = {}
        loading: dict[int, dict[str, str]] | None = None  # a paged snapshot, still arriving
        ready_at = 0  # decide once the events up to here (the pages' largest as_of) are applied
        busy = {"queued", "active", "waiting_retry"}
        async for event in self._stream(snapshots=True):
            if isinstance(event, ev.Snapshot | ev.SnapshotPage):
                if isinstance(event, ev.Snapshot):
                    loading, ready_at = {}, event.seq
                elif loading is None:
                    continue  # a page whose snapshot we did not see
                ready_at = max(ready_at, event.seq if event.as_of is None else event.as_of)
                loading.update(
                    (int(item["id"]), {f["ref"]: f["status"] for f in item.get("files", [])})
                    for item in event.items
                    if int(item["id"]) in wanted
                )
                if event.next is not None:
                    continue
                statuses, loading = loading, None
            elif isinstance(event, ev.Missed):
                loading = {}  # events were lost: a fresh snapshot follows, wait for it whole
                continue
            elif loading is not None:
                continue  # the daemon sends events only after the last page
            elif isinstance(event, ev.StatusChanged) and event.group_id in wanted:
                statuses.setdefault(event.group_id, {})[event.ref] = event.status
            # A later page may be newer than an earlier one: the view is one moment's only
            # once the events up to the newest page are applied.
            if event.seq < ready_at:
                continue
            # A download the daemon does not know counts as settled, as in the manager.
            if not any(s in busy for files in statuses.values() for s in files.values()):
                return

    async def events(self) -> AsyncIterator[ev.Event]:
        """Events from now on, as typed values (a `Missed` when this client fell behind;
        ends when the daemon stops)."""
        async for event in self._stream(snapshots=False):
            yield event

    async def _stream(self, *, snapshots: bool) -> AsyncIterator[ev.Event]:
        import aiohttp

        session = self._require_session()
        parser = SSEParser()
        try:
            async with session.get(
                f"{self.url}/api/events",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT),
                headers={"Accept": "text/event-stream"},
            ) as response:
                if response.status >= 400:
                    body: Any = None
                    with contextlib.suppress(ValueError, aiohttp.ClientError):
                        body = await response.json(content_type=None)
                    raise error_from_response(response.status, body)
                async for chunk in response.content.iter_any():
                    for message in parser.feed(chunk):
                        try:
                            event = ev.from_dict(json.loads(message.data))
                        except (ValueError, TypeError):
                            continue  # a type this version does not know
                        # The manager's own events() has no snapshots (a `Missed` says when
                        # to reload one); only `wait` needs them.
                        if isinstance(event, ev.Snapshot | ev.SnapshotPage) and not snapshots:
                            continue
                        yield event
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            return  # the daemon went away: the stream ends, as the bus does on shutdown
        except aiohttp.ClientError as exc:
            raise StateError(f"the daemon at {self.url} is not answering: {exc}") from exc
