"""The fake Hub's model: repos, their commits and branches, file versions, gated access grants.

File bodies are generated on the fly from (seed, offset), so multi-GiB files cost no memory;
hashes are computed lazily, once per distinct version.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Blob", "Commit", "FileInfo", "Repo", "RepoCatalog", "RepoFile", "ensure_hashed"]

_BLOCK_LEN: Final = 1_048_573  # prime, so generated content has no power-of-two period
PIECE: Final = 1 << 20  # body write size when no fault needs a finer cut
_LFS_THRESHOLD: Final = 10 << 20
_LFS_SUFFIXES: Final = (".gguf", ".safetensors", ".bin")


@dataclass(frozen=True, slots=True)
class RepoFile:
    """A file to put in a commit: either given `content` or `size` bytes generated from `seed`.

    `lfs=None` picks like the Hub: LFS for .gguf/.safetensors/.bin or anything over 10 MiB.
    """

    path: str
    content: bytes | None = None
    size: int | None = None
    seed: int = 0
    lfs: bool | None = None

    def __post_init__(self) -> None:
        if (self.content is None) == (self.size is None):
            raise ValueError(f"RepoFile {self.path!r}: give exactly one of content= or size=")
        if self.size is not None and self.size < 0:
            raise ValueError(f"RepoFile {self.path!r}: size must be >= 0")
        _check_repo_path(self.path)

    @property
    def length(self) -> int:
        return len(self.content) if self.content is not None else (self.size or 0)

    @property
    def is_lfs(self) -> bool:
        if self.lfs is not None:
            return self.lfs
        return self.path.lower().endswith(_LFS_SUFFIXES) or self.length > _LFS_THRESHOLD


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file version as the Hub knows it. `git_oid` is the git blob id of what git stores:
    the content for a small file, the LFS pointer file for an LFS file (as on the real Hub)."""

    path: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool
    commit: str


def _check_repo_path(path: str) -> None:
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise ValueError(f"not a repo file path: {path!r}")


def _check_repo_id(repo_id: str) -> tuple[str, str]:
    owner, slash, name = repo_id.partition("/")
    if not slash or not owner or not name or "/" in name:
        raise ValueError(f"not a repo id (owner/name): {repo_id!r}")
    return owner, name


# -- file versions: content, hashes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digests:
    sha256: str
    git_oid: str
    pointer_size: int | None  # LFS files only


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blob:
    """One immutable file version. Generated bodies are a prime-length pseudo-random block
    repeated (plus a magic prefix), so any range is a cheap slice and nothing is held per file."""

    __slots__ = ("_digests", "_lock", "_magic", "_source", "cdn_etag", "lfs", "size")

    def __init__(
        self, *, size: int, lfs: bool, source: bytes, magic: bytes, identity: bytes
    ) -> None:
        self.size = size
        self.lfs = lfs
        self._source = memoryview(source)
        self._magic = memoryview(magic[:size])
        self._lock = threading.Lock()
        self._digests: Digests | None = None
        # A stable per-version validator that is deliberately not the sha256 (the CDN trap).
        self.cdn_etag = '"' + hashlib.sha256(b"fakehub-cdn-etag\0" + identity).hexdigest() + '"'

    def view(self, offset: int, limit: int) -> memoryview:
        """Up to `limit` bytes starting at `offset` (at least one byte while offset < size)."""
        limit = min(limit, self.size - offset)
        if limit <= 0:
            return memoryview(b"")
        if offset < len(self._magic):
            return self._magic[offset : offset + limit]
        period = len(self._source)
        if period == self.size:  # given content: no wrap-around
            return self._source[offset : offset + limit]
        i = offset % period
        return self._source[i : i + min(limit, period - i)]

    def pieces(self, start: int, end: int, piece: int = PIECE) -> Iterator[memoryview]:
        pos = start
        while pos < end:
            chunk = self.view(pos, min(piece, end - pos))
            yield chunk
            pos += len(chunk)

    def read(self, start: int, end: int) -> bytes:
        return b"".join(self.pieces(start, end))

    @property
    def hashed(self) -> bool:
        return self._digests is not None

    def digests(self) -> Digests:
        """Hash once, lazily, streaming through the content (thread-safe, ~1.3 s/GiB)."""
        with self._lock:
            if self._digests is None:
                sha256 = hashlib.sha256()
                sha1 = None if self.lfs else hashlib.sha1(b"blob %d\0" % self.size)
                for chunk in self.pieces(0, self.size, _BLOCK_LEN):
                    sha256.update(chunk)
                    if sha1 is not None:
                        sha1.update(chunk)
                digest = sha256.hexdigest()
                if sha1 is not None:
                    self._digests = Digests(digest, sha1.hexdigest(), None)
                else:
                    pointer = _lfs_pointer(digest, self.size)
                    self._digests = Digests(digest, _git_blob_oid(pointer), len(pointer))
            return self._digests


async def ensure_hashed(blobs: Iterable[Blob]) -> None:
    """Compute the digests a response needs without blocking the loop."""
    pending = [b for b in blobs if not b.hashed]
    if pending:
        # hashlib releases the GIL, so the loop keeps serving while a big file is hashed.
        await asyncio.to_thread(lambda: [b.digests() for b in pending])


@functools.lru_cache(maxsize=16)
def _generated_block(seed: int) -> bytes:
    # Shared by every FakeHub in the process: tests make many hubs from a few seeds.
    return hashlib.shake_128(f"fakehub:{seed}".encode()).digest(_BLOCK_LEN)


# -- repos and commits --------------------------------------------------------------------------


@dataclass(slots=True)
class Commit:
    sha: str
    files: dict[str, Blob]
    created: float
    directories: frozenset[str]


def _directories_of(paths: Iterable[str]) -> frozenset[str]:
    dirs: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return frozenset(dirs)


@dataclass(slots=True)
class Repo:
    repo_id: str
    private: bool
    gated: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def add_commit(self, files: dict[str, Blob]) -> Commit:
        clash = _directories_of(files) & files.keys()
        if clash:
            raise ValueError(f"{self.repo_id}: paths used as both file and directory: {clash}")
        seed = f"fakehub:{self.repo_id}:{len(self.commits)}".encode()
        sha = hashlib.sha1(seed).hexdigest()
        ordered = dict(sorted(files.items()))
        commit = Commit(sha, ordered, time.time(), _directories_of(ordered))
        self.commits[sha] = commit
        return commit

    def find(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class RepoCatalog:
    """Every repo of one fake Hub, who was granted a gated one, and the shared file versions."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.grants: dict[str, set[str]] = {}
        self._blobs: dict[tuple[object, ...], Blob] = {}

    def add_repo(self, repo_id: str, files: Sequence[RepoFile], private: bool, gated: bool) -> str:
        _check_repo_id(repo_id)
        if repo_id in self.repos:
            raise ValueError(f"repo {repo_id!r} already exists; use commit()")
        repo = Repo(repo_id, private=private, gated=gated)
        commit = repo.add_commit(self._blobs_for(files))
        repo.branches["main"] = commit.sha
        self.repos[repo_id] = repo
        return commit.sha

    def commit(self, repo_id: str, files: Sequence[RepoFile], branch: str, replace: bool) -> str:
        repo = self.repo(repo_id)
        base = repo.commits[repo.branches.get(branch, repo.branches["main"])]
        tree = {} if replace else dict(base.files)
        tree.update(self._blobs_for(files))
        commit = repo.add_commit(tree)
        repo.branches[branch] = commit.sha
        return commit.sha

    def grant(self, repo_id: str, token: str) -> None:
        self.repo(repo_id)
        self.grants.setdefault(repo_id, set()).add(token)

    def granted(self, repo_id: str, token: str | None) -> bool:
        return token is not None and token in self.grants.get(repo_id, ())

    def repo(self, repo_id: str) -> Repo:
        try:
            return self.repos[repo_id]
        except KeyError:
            raise KeyError(f"no repo {repo_id!r}") from None

    def locate(self, repo_id: str, path: str, revision: str) -> tuple[Commit, Blob]:
        commit = self.repo(repo_id).find(revision)
        if commit is None:
            raise KeyError(f"{repo_id}: no revision {revision!r}")
        try:
            return commit, commit.files[path]
        except KeyError:
            raise KeyError(f"{repo_id}@{revision}: no file {path!r}") from None

    def _blobs_for(self, files: Sequence[RepoFile]) -> dict[str, Blob]:
        out: dict[str, Blob] = {}
        for rf in files:
            if rf.path in out:
                raise ValueError(f"path {rf.path!r} given twice in one commit")
            out[rf.path] = self._blob(rf)
        return out

    def _blob(self, rf: RepoFile) -> Blob:
        # Identical versions share one Blob, so their hashes are computed once.
        magic = b"GGUF" if rf.path.lower().endswith(".gguf") else b""
        if rf.content is not None:
            key: tuple[object, ...] = ("content", rf.content, rf.is_lfs)
            identity = b"content\0" + rf.content
        else:
            key = ("generated", rf.seed, rf.length, magic, rf.is_lfs)
            identity = repr(key).encode()
        blob = self._blobs.get(key)
        if blob is None:
            if rf.content is not None:
                source, magic = rf.content, b""
            else:
                source = _generated_block(rf.seed)
            blob = Blob(
                size=rf.length, lfs=rf.is_lfs, source=source, magic=magic, identity=identity
            )
            self._blobs[key] = blob
        return blob
