"""What the mirror holds: every file of a Hub download in its manager's queue, by repo and commit.

A completed file whose bytes are still at their destination (with the recorded size) is held
complete; a file still queued, active, paused or waiting to retry is held in progress (its
bytes are streamed as they arrive, see `stream.py`). Failed and cancelled files are not held.
Any Hub download counts, not only those the mirror pulled: a model fetched with `modelfetch get`
on this host is served as well, under the commit it was pinned at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelfetch.core.models import FileStatus
from modelfetch.core.queue import FileKey
from modelfetch.manager import DownloadManager
from modelfetch.mirror.meta import FileMeta

__all__ = ["HeldFile", "HeldIndex", "held_index"]

_IN_PROGRESS = frozenset(
    {FileStatus.QUEUED, FileStatus.ACTIVE, FileStatus.PAUSED, FileStatus.WAITING_RETRY}
)


@dataclass(frozen=True, slots=True)
class HeldFile:
    repo_id: str
    commit: str
    meta: FileMeta
    dest: Path
    key: FileKey
    complete: bool
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class HeldIndex:
    files: dict[tuple[str, str], dict[str, HeldFile]]  # (repo, commit) -> path -> file
    pinned: dict[tuple[str, str], str]  # (repo, revision asked) -> the commit it was pinned at
    newest: dict[str, str]  # repo -> the commit of its most recently added download

    def at(self, repo_id: str, commit: str) -> dict[str, HeldFile]:
        return self.files.get((repo_id, commit), {})

    def find(self, repo_id: str, commit: str, path: str) -> HeldFile | None:
        return self.at(repo_id, commit).get(path)


def _complete_on_disk(dest: Path, size: int) -> bool:
    try:
        return os.stat(dest).st_size == size
    except OSError:
        return False


def held_index(manager: DownloadManager) -> HeldIndex:
    files: dict[tuple[str, str], dict[str, HeldFile]] = {}
    pinned: dict[tuple[str, str], str] = {}
    newest: dict[str, tuple[float, str]] = {}
    for group in manager.groups():
        repo, commit = group.repo_id, group.commit
        if repo is None or commit is None:
            continue
        at = files.setdefault((repo, commit), {})
        for f in group.files:
            size = f.expected_size if f.expected_size is not None else f.bytes_total
            if size is None or (f.expected_sha256 is None and f.expected_git_oid is None):
                continue  # the mirror serves only what it can vouch for
            if f.status is FileStatus.COMPLETED:
                if not _complete_on_disk(Path(f.dest), size):
                    continue
                complete = True
            elif f.status in _IN_PROGRESS:
                complete = False
            else:
                continue
            meta = FileMeta.of(f.name, size, f.expected_sha256, f.expected_git_oid)
            held = HeldFile(
                repo, commit, meta, Path(f.dest), (f.group_id, f.index), complete, f.finished_at
            )
            known = at.get(f.name)
            if known is None or (complete and not known.complete):
                at[f.name] = held
        if at:
            if group.revision:
                pinned[(repo, group.revision)] = commit
            if group.created_at >= newest.get(repo, (-1.0, ""))[0]:
                newest[repo] = (group.created_at, commit)
    return HeldIndex(
        {k: v for k, v in files.items() if v}, pinned, {r: c for r, (_, c) in newest.items()}
    )
