"""`FakeHub`: the Hub and CDN servers' lifecycle and the methods a test drives them with."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

from modelfetch.testing.fakehub.api import HubApi
from modelfetch.testing.fakehub.cdn import Cdn
from modelfetch.testing.fakehub.faults import Fault, FaultBook
from modelfetch.testing.fakehub.limits import ClientBuckets, client_id
from modelfetch.testing.fakehub.log import Origin, RequestRecord, recorder, select
from modelfetch.testing.fakehub.repo import FileInfo, RepoCatalog, RepoFile

__all__ = ["FakeHub"]


class FakeHub:
    """The Hub on `endpoint`, its CDN on `cdn_endpoint`; see docs/dev/fakehub-api.md."""

    def __init__(
        self,
        *,
        port: int = 0,
        cdn_port: int = 0,
        page_size: int = 1000,
        cdn_public_url: str | None = None,
        connection_rate: float | None = None,
        client_rate: float | None = None,
    ) -> None:
        for name, rate in (("connection_rate", connection_rate), ("client_rate", client_rate)):
            if rate is not None and rate <= 0:
                raise ValueError(f"{name} must be > 0 bytes/s (or None for no cap)")
        self.tokens: set[str] = set()
        # Bandwidth caps on every file body (bytes/s, None = none), read when a body starts:
        # each connection, and each client over all its connections (limits.py).
        self.connection_rate = connection_rate
        self.client_rate = client_rate
        self.client_buckets = ClientBuckets()
        self.client_bytes: Counter[str] = Counter()  # file body bytes sent, per client id
        # Where resolve redirects point (e.g. a proxy in front of the CDN); None: the CDN itself.
        self.cdn_public_url = cdn_public_url
        self.log: list[RequestRecord] = []
        self.page_size = page_size
        self.catalog = RepoCatalog()
        self.fault_book = FaultBook()
        self._ports = (port, cdn_port)
        self._runners: list[web.AppRunner] = []
        self._in_flight: set[asyncio.Task[object]] = set()
        self._endpoint: str | None = None
        self._cdn_endpoint: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("FakeHub is not started")
        return self._endpoint

    @property
    def cdn_endpoint(self) -> str:
        if self._cdn_endpoint is None:
            raise RuntimeError("FakeHub is not started")
        return self._cdn_endpoint

    async def start(self) -> None:
        if self._runners:
            return
        cdn_routes = Cdn(self)
        hub = web.Application(middlewares=[self._recorder("hub")])
        hub.router.add_routes(HubApi(self).routes())
        hub.router.add_routes(cdn_routes.resolve_routes())
        cdn = web.Application(middlewares=[self._recorder("cdn")])
        cdn.router.add_routes(cdn_routes.cdn_routes())
        try:
            urls = [
                await self._serve(app, port)
                for app, port in zip((hub, cdn), self._ports, strict=True)
            ]
        except BaseException:
            await self.close()
            raise
        self._endpoint, self._cdn_endpoint = urls

    def _recorder(self, origin: Origin) -> Middleware:
        return recorder(origin, self.log, self._in_flight)

    async def _serve(self, app: web.Application, port: int) -> str:
        # handler_cancellation: a handler stalled on purpose ends as soon as its client leaves.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        host, real_port = runner.addresses[0][:2]
        return f"http://{host}:{real_port}"

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        self._endpoint = self._cdn_endpoint = None
        # A fake needs no graceful drain: end stalled or throttled bodies now, not after a timeout.
        for task in list(self._in_flight):
            task.cancel()
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> FakeHub:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- repos ---------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Sequence[RepoFile],
        private: bool = False,
        gated: bool = False,
    ) -> str:
        """Create a repo whose branch "main" points at one commit holding `files`."""
        return self.catalog.add_repo(repo_id, files, private=private, gated=gated)

    def commit(
        self,
        repo_id: str,
        files: Sequence[RepoFile],
        branch: str = "main",
        replace: bool = False,
    ) -> str:
        """A new commit on `branch` (created from "main" if new): the branch's files updated with
        `files`, or exactly `files` when `replace`. Older commits stay servable by sha."""
        return self.catalog.commit(repo_id, files, branch=branch, replace=replace)

    def grant(self, repo_id: str, token: str) -> None:
        """Give `token` access to a gated repo (and make it a valid token)."""
        self.catalog.grant(repo_id, token)
        self.tokens.add(token)

    def file(self, repo_id: str, path: str, revision: str = "main") -> FileInfo:
        commit, blob = self.catalog.locate(repo_id, path, revision)
        digests = blob.digests()
        return FileInfo(path, blob.size, digests.sha256, digests.git_oid, blob.lfs, commit.sha)

    def content(
        self,
        repo_id: str,
        path: str,
        revision: str = "main",
        start: int = 0,
        end: int | None = None,
    ) -> bytes:
        """Bytes [start, end) of a file version (slice semantics; end=None means to the end)."""
        _, blob = self.catalog.locate(repo_id, path, revision)
        if start < 0 or (end is not None and end < 0):
            raise ValueError("start and end must be >= 0")
        stop = blob.size if end is None else min(end, blob.size)
        return blob.read(min(start, stop), stop)

    @staticmethod
    def client_id(token: str | None = None, peer: str | None = "127.0.0.1") -> str:
        """The opaque id the hub counts a client's bytes under (`client_bytes`, the log's
        `client`): of its token, or without one of its address."""
        return client_id(token, peer)

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    # -- faults and the log --------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        self.fault_book.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.fault_book.faults.clear()

    @property
    def faults(self) -> list[Fault]:
        return list(self.fault_book.faults)

    def requests(
        self,
        origin: Origin | None = None,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> list[RequestRecord]:
        return select(self.log, origin, path_contains, method)
