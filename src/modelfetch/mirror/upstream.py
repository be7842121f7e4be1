"""The mirror's upstream (the daemon's own HF_ENDPOINT): branches pinned, listings, access.

Through the manager's Hub client only. A branch or tag is pinned to its commit for
`branch_ttl` seconds (a commit sha needs no pinning); the file list at a commit never changes,
so it is kept (the last `_MAX_LISTINGS`). The last commit each branch was seen at is remembered
beyond its TTL: with the upstream unreachable, that is the commit the mirror serves it at.

Access is asked of the upstream with the *client's* token, never assumed from the mirror's
own: whether it may read the repo's metadata (`revision/{commit}`), and whether it may download
its files (a HEAD of one resolve URL, which is where the Hub refuses a gated repo). Each answer
is kept `access_ttl` seconds, keyed by a digest of the token (the token itself is kept nowhere).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from modelfetch.core.errors import HTTPStatusError
from modelfetch.hub import HubClient, ResolvedRepo
from modelfetch.manager import DownloadManager
from modelfetch.mirror.names import is_commit

__all__ = ["Upstream"]

T = TypeVar("T")
_MAX_LISTINGS = 256
# A client is waiting (huggingface_hub gives a HEAD 10 s): one quick retry, then the mirror
# answers from what it holds rather than keep it waiting on an upstream that is down.
_RETRIES = (0.25,)
# A repo readable by the token answers these for a commit or file it lacks: not a refusal.
_NOT_ABOUT_ACCESS = frozenset({"EntryNotFound", "RevisionNotFound"})


@dataclass(frozen=True, slots=True)
class _Decision:
    until: float
    error: HTTPStatusError | None


class Upstream:
    def __init__(
        self,
        manager: DownloadManager,
        *,
        branch_ttl: float = 30.0,
        access_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manager = manager
        self._branch_ttl = branch_ttl
        self._access_ttl = access_ttl
        self._clock = clock
        self._pins: dict[tuple[str, str], tuple[float, str]] = {}
        self.last_pinned: dict[tuple[str, str], str] = {}
        self._listings: OrderedDict[tuple[str, str], ResolvedRepo] = OrderedDict()
        self._access: dict[tuple[str, str, str], _Decision] = {}
        self._in_flight: dict[object, asyncio.Future[object]] = {}

    @property
    def own_token(self) -> bool:
        return self._manager.hub_config.token is not None

    def _client(self, token: str | None) -> HubClient:
        """For metadata and downloads: the mirror's own token if it has one, else the client's."""
        if self.own_token:
            return self._manager.hub_client(retry_delays=_RETRIES)
        return self._manager.hub_client(token, anonymous=token is None, retry_delays=_RETRIES)

    async def _once(self, key: object, make: Callable[[], Awaitable[T]]) -> T:
        """One upstream request per key at a time; concurrent askers share its answer."""
        pending = self._in_flight.get(key)
        if pending is not None:
            return cast(T, await asyncio.shield(pending))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await make()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._in_flight[key]

    async def pin(self, repo_id: str, revision: str, token: str | None) -> str:
        """The commit `revision` points at upstream (a sha is its own commit)."""
        if is_commit(revision):
            return revision
        key = (repo_id, revision)
        cached = self._pins.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]

        async def ask() -> str:
            return await self._client(token).revision_sha(repo_id, revision)

        commit = await self._once(("pin", *key), ask)
        self._pins[key] = (self._clock() + self._branch_ttl, commit)
        self.last_pinned[key] = commit
        return commit

    async def listing(self, repo_id: str, commit: str, token: str | None) -> ResolvedRepo:
        key = (repo_id, commit)
        found = self._listings.get(key)
        if found is not None:
            self._listings.move_to_end(key)
            return found

        async def ask() -> ResolvedRepo:
            return await self._client(token).resolve(repo_id, commit)

        resolved = await self._once(("list", *key), ask)
        self._listings[key] = resolved
        while len(self._listings) > _MAX_LISTINGS:
            self._listings.popitem(last=False)
        return resolved

    def cached_listing(self, repo_id: str, commit: str) -> ResolvedRepo | None:
        return self._listings.get((repo_id, commit))

    async def check(self, repo_id: str, commit: str, path: str | None, token: str | None) -> None:
        """Raise the upstream's refusal (HTTPStatusError) unless the client's token (or none)
        may read the repo's metadata (`path` None) or download `path`. NetworkError when the
        upstream cannot be asked and no earlier answer holds."""
        kind = "meta" if path is None else "content"
        who = hashlib.sha256(token.encode()).hexdigest() if token else ""
        key = (kind, repo_id, who)
        now = self._clock()
        found = self._access.get(key)
        if found is None or found.until <= now:
            found = await self._once(
                ("access", *key), lambda: self._ask(repo_id, commit, path, token)
            )
            self._access[key] = found
        if found.error is not None:
            raise found.error

    def accepted_before(self, repo_id: str, token: str | None, *, content: bool) -> bool:
        """The upstream accepted this token (or none) for the repo at some point since start:
        what the mirror goes by while the upstream cannot be asked."""
        who = hashlib.sha256(token.encode()).hexdigest() if token else ""
        kinds = ("content",) if content else ("meta", "content")
        for kind in kinds:
            found = self._access.get((kind, repo_id, who))
            if found is not None and found.error is None:
                return True
        return False

    async def _ask(
        self, repo_id: str, commit: str, path: str | None, token: str | None
    ) -> _Decision:
        client = self._manager.hub_client(token, anonymous=token is None, retry_delays=_RETRIES)
        try:
            if path is None:
                await client.revision_sha(repo_id, commit)
            else:
                await client.check_file_access(repo_id, commit, path)
        except HTTPStatusError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise  # the upstream is unwell: no answer about access
            if exc.error_code in _NOT_ABOUT_ACCESS:
                raise  # about this commit or file, not the repo: forwarded, never kept
            return _Decision(self._clock() + self._access_ttl, exc)
        return _Decision(self._clock() + self._access_ttl, None)
