"""Pull-through: a file the mirror does not hold becomes a download on its manager's queue.

The request is pinned (the resolve URL names the commit), carries the size and digest the
upstream listed (so the transfer verifies it), and lands under the mirror's cache directory at
`<owner>/<name>/<commit>/<path>`: two commits of a path never share a destination. Asking
again while it is queued or active returns the same download (the manager dedupes by request),
and concurrent askers here wait for one `enqueue`: one upstream fetch however many clients.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelfetch.core.paths import safe_join
from modelfetch.core.queue import FileKey
from modelfetch.hub import RepoFileEntry
from modelfetch.manager import DownloadManager
from modelfetch.requests import MIRROR_SPEC_PREFIX, FileRequest, GroupRequest

__all__ = ["Puller"]


class Puller:
    def __init__(self, manager: DownloadManager, cache_dir: Path, *, priority: int = 10) -> None:
        self._manager = manager
        self.cache_dir = cache_dir
        self._priority = priority
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    def dest_of(self, repo_id: str, commit: str, path: str) -> Path:
        return safe_join(self.cache_dir, f"{repo_id}/{commit}/{path}")

    async def pull(
        self, repo_id: str, commit: str, entry: RepoFileEntry, hub_token: str | None
    ) -> FileKey:
        """Queue `entry` of `repo_id` at `commit` (or find it queued); its file's key.
        `hub_token`: the client's token, when the mirror has none of its own."""
        key = (repo_id, commit, entry.path)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._enqueue(repo_id, commit, entry, hub_token)
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _enqueue(
        self, repo_id: str, commit: str, entry: RepoFileEntry, hub_token: str | None
    ) -> FileKey:
        m = self._manager
        dest = self.dest_of(repo_id, commit, entry.path)
        request = GroupRequest(
            name=f"{repo_id}/{entry.path}",
            files=(
                FileRequest(
                    url=m.hub_client().resolve_url(repo_id, commit, entry.path),
                    path=entry.path,
                    size=entry.size,
                    sha256=entry.sha256 if entry.lfs else None,
                    git_oid=None if entry.lfs else entry.git_oid,
                    dest=dest,
                ),
            ),
            dest_dir=safe_join(self.cache_dir, f"{repo_id}/{commit}"),
            spec=f"{MIRROR_SPEC_PREFIX}{repo_id}@{commit}/{entry.path}",
            priority=self._priority,
            repo_id=repo_id,
            revision=commit,
            commit=commit,
        )
        gid = await m.enqueue(request, hub_token=hub_token)
        m.expedite(gid, 1)  # a client waits for it now: it does not queue behind max_active
        return (gid, 1)
