"""A faithful fake of the Hugging Face Hub and its CDN on loopback, with fault knobs.

Two aiohttp.web servers in the caller's event loop: the Hub (API, resolve) and a separate CDN
origin that LFS resolves redirect to. File bodies are generated on the fly from (seed, offset), so
multi-GiB files cost no memory. The contract lives in docs/dev/fakehub-api.md.

Run alone: `python -m modelfetch.testing.fakehub [--port 8090] [--cdn-port 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, get_args
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = [
    "SAMPLE_REPO",
    "FakeHub",
    "Fault",
    "FileInfo",
    "RepoFile",
    "RequestRecord",
    "add_sample_repo",
    "main",
]

Origin = Literal["hub", "cdn"]
FaultOrigin = Literal["hub", "cdn", "any", "api"]
FaultKind = Literal[
    "truncate",
    "stall",
    "reset",
    "status",
    "ignore_range",
    "corrupt",
    "throttle",
    "expire",
    "redirect_loop",
    "bad_linked_etag",
]

_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
_FAULT_ORIGINS: Final = frozenset(get_args(FaultOrigin))
# Faults that shape a body: they only ever apply to GET (a HEAD probe must not use them up).
_BODY_KINDS: Final = frozenset(
    {"truncate", "stall", "reset", "ignore_range", "corrupt", "throttle"}
)

_BLOCK_LEN: Final = 1_048_573  # prime, so generated content has no power-of-two period
_PIECE: Final = 1 << 20  # body write size when no fault needs a finer cut
_LFS_THRESHOLD: Final = 10 << 20
_LFS_SUFFIXES: Final = (".gguf", ".safetensors", ".bin")
_FAR_FUTURE: Final = 365 * 24 * 3600.0
_SIGNING_KEY: Final = b"fakehub-cdn-signing-key"

SAMPLE_REPO: Final = "modelfetch/tiny-GGUF"


# ---------------------------------------------------------------------------------------------
# Public records
# ---------------------------------------------------------------------------------------------


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


@dataclass(slots=True)
class Fault:
    """A misbehaviour to inject; see docs/dev/fakehub-api.md. `hits` counts the requests it
    changed so far (it stops applying once `hits == times`)."""

    kind: FaultKind
    path: str | None = None
    origin: FaultOrigin = "any"
    times: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0
    status: int = 503
    retry_after: str | int | float | None = None
    rate: float | None = None
    hits: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(_FAULT_KINDS)}")
        if self.origin not in _FAULT_ORIGINS:
            raise ValueError(
                f"unknown fault origin {self.origin!r}; one of {sorted(_FAULT_ORIGINS)}"
            )
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 (or None for every matching request)")
        if self.after_bytes < 0 or self.seconds < 0:
            raise ValueError("after_bytes and seconds must be >= 0")
        if self.kind == "throttle" and (self.rate is None or self.rate <= 0):
            raise ValueError("a throttle fault needs rate > 0 (bytes per second)")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status {self.status} is not an HTTP status")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished exchange. `time` is when the request arrived (epoch seconds); `bytes_sent`
    counts body bytes handed to the socket, also for truncated or reset responses. A request
    whose client went away before any response has status 499."""

    time: float
    origin: Origin
    method: str
    path: str
    query: str
    range: str | None
    if_range: str | None
    authorization: bool
    status: int
    bytes_sent: int
    end: float = 0.0  # when the response finished (epoch seconds): with `time`, its lifetime


def _check_repo_path(path: str) -> None:
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise ValueError(f"not a repo file path: {path!r}")


def _check_repo_id(repo_id: str) -> tuple[str, str]:
    owner, slash, name = repo_id.partition("/")
    if not slash or not owner or not name or "/" in name:
        raise ValueError(f"not a repo id (owner/name): {repo_id!r}")
    return owner, name


# ---------------------------------------------------------------------------------------------
# File versions: content, hashes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Digests:
    sha256: str
    git_oid: str
    pointer_size: int | None  # LFS files only


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Blob:
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
        self._digests: _Digests | None = None
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

    def pieces(self, start: int, end: int, piece: int = _PIECE) -> Iterator[memoryview]:
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

    def digests(self) -> _Digests:
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
                    self._digests = _Digests(digest, sha1.hexdigest(), None)
                else:
                    pointer = _lfs_pointer(digest, self.size)
                    self._digests = _Digests(digest, _git_blob_oid(pointer), len(pointer))
            return self._digests


@functools.lru_cache(maxsize=16)
def _generated_block(seed: int) -> bytes:
    # Shared by every FakeHub in the process: tests make many hubs from a few seeds.
    return hashlib.shake_128(f"fakehub:{seed}".encode()).digest(_BLOCK_LEN)


# ---------------------------------------------------------------------------------------------
# Repos and commits
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Commit:
    sha: str
    files: dict[str, _Blob]
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
class _Repo:
    repo_id: str
    private: bool
    gated: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)

    def add_commit(self, files: dict[str, _Blob]) -> _Commit:
        clash = _directories_of(files) & files.keys()
        if clash:
            raise ValueError(f"{self.repo_id}: paths used as both file and directory: {clash}")
        seed = f"fakehub:{self.repo_id}:{len(self.commits)}".encode()
        sha = hashlib.sha1(seed).hexdigest()
        ordered = dict(sorted(files.items()))
        commit = _Commit(sha, ordered, time.time(), _directories_of(ordered))
        self.commits[sha] = commit
        return commit

    def find(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


# ---------------------------------------------------------------------------------------------
# Per-request plumbing
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Exchange:
    status: int = 499  # nginx's "client closed request" until a response is chosen
    bytes_sent: int = 0


_EXCHANGE: Final = web.RequestKey("fakehub_exchange", _Exchange)


class _Reply(Exception):
    """Short-circuits a handler with a finished response (errors, fault statuses)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _json_response(
    payload: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, code: str | None = None, **headers: str) -> _Reply:
    extra = dict(headers)
    if code is not None:
        extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
    return _Reply(_json_response({"error": message}, status=status, headers=extra))


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


_Unsatisfiable = Literal["unsatisfiable"]


def _parse_range(header: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """One `bytes=` range → (start, end exclusive); None means ignore it and send 200 (RFC 9110
    lets a server ignore a malformed or multi-range header)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # suffix: the last n bytes
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None  # invalid (e.g. 9-3): ignore it, as RFC 9110 allows
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size)


def _encode_cursor(commit: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{commit}:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, int] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        commit, _, offset = raw.partition(":")
        return commit, int(offset)
    except (ValueError, binascii.Error):
        return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeHub:
    """The Hub on `endpoint`, its CDN on `cdn_endpoint`; see docs/dev/fakehub-api.md."""

    def __init__(
        self,
        *,
        port: int = 0,
        cdn_port: int = 0,
        page_size: int = 1000,
        cdn_public_url: str | None = None,
    ) -> None:
        self.tokens: set[str] = set()
        # Where resolve redirects point (e.g. a proxy in front of the CDN); None: the CDN itself.
        self.cdn_public_url = cdn_public_url
        self.log: list[RequestRecord] = []
        self.page_size = page_size
        self._ports = (port, cdn_port)
        self._faults: list[Fault] = []
        self._repos: dict[str, _Repo] = {}
        self._grants: dict[str, set[str]] = {}
        self._blobs: dict[tuple[object, ...], _Blob] = {}
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
        hub = web.Application(middlewares=[self._recorder("hub")])
        hub.router.add_get("/api/models/{owner}/{name}", self._model_info)
        hub.router.add_get("/api/models/{owner}/{name}/revision/{rev}", self._model_info)
        hub.router.add_get("/api/models/{owner}/{name}/tree/{rev}", self._tree)
        hub.router.add_get("/api/models/{owner}/{name}/tree/{rev}/{path:.+}", self._tree)
        hub.router.add_get("/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        cdn = web.Application(middlewares=[self._recorder("cdn")])
        cdn.router.add_get("/cdn/{owner}/{name}/{commit}/{path:.+}", self._cdn)
        try:
            urls = [
                await self._serve(app, port)
                for app, port in zip((hub, cdn), self._ports, strict=True)
            ]
        except BaseException:
            await self.close()
            raise
        self._endpoint, self._cdn_endpoint = urls

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
        _check_repo_id(repo_id)
        if repo_id in self._repos:
            raise ValueError(f"repo {repo_id!r} already exists; use commit()")
        repo = _Repo(repo_id, private=private, gated=gated)
        commit = repo.add_commit(self._blobs_for(files))
        repo.branches["main"] = commit.sha
        self._repos[repo_id] = repo
        return commit.sha

    def commit(
        self,
        repo_id: str,
        files: Sequence[RepoFile],
        branch: str = "main",
        replace: bool = False,
    ) -> str:
        """A new commit on `branch` (created from "main" if new): the branch's files updated with
        `files`, or exactly `files` when `replace`. Older commits stay servable by sha."""
        repo = self._repo(repo_id)
        base = repo.commits[repo.branches.get(branch, repo.branches["main"])]
        tree = {} if replace else dict(base.files)
        tree.update(self._blobs_for(files))
        commit = repo.add_commit(tree)
        repo.branches[branch] = commit.sha
        return commit.sha

    def grant(self, repo_id: str, token: str) -> None:
        """Give `token` access to a gated repo (and make it a valid token)."""
        self._repo(repo_id)
        self.tokens.add(token)
        self._grants.setdefault(repo_id, set()).add(token)

    def file(self, repo_id: str, path: str, revision: str = "main") -> FileInfo:
        commit, blob = self._locate(repo_id, path, revision)
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
        _, blob = self._locate(repo_id, path, revision)
        if start < 0 or (end is not None and end < 0):
            raise ValueError("start and end must be >= 0")
        stop = blob.size if end is None else min(end, blob.size)
        return blob.read(min(start, stop), stop)

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def _repo(self, repo_id: str) -> _Repo:
        try:
            return self._repos[repo_id]
        except KeyError:
            raise KeyError(f"no repo {repo_id!r}") from None

    def _locate(self, repo_id: str, path: str, revision: str) -> tuple[_Commit, _Blob]:
        commit = self._repo(repo_id).find(revision)
        if commit is None:
            raise KeyError(f"{repo_id}: no revision {revision!r}")
        try:
            return commit, commit.files[path]
        except KeyError:
            raise KeyError(f"{repo_id}@{revision}: no file {path!r}") from None

    def _blobs_for(self, files: Sequence[RepoFile]) -> dict[str, _Blob]:
        out: dict[str, _Blob] = {}
        for rf in files:
            if rf.path in out:
                raise ValueError(f"path {rf.path!r} given twice in one commit")
            out[rf.path] = self._blob(rf)
        return out

    def _blob(self, rf: RepoFile) -> _Blob:
        # Identical versions share one _Blob, so their hashes are computed once.
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
            blob = _Blob(
                size=rf.length, lfs=rf.is_lfs, source=source, magic=magic, identity=identity
            )
            self._blobs[key] = blob
        return blob

    # -- faults and the log --------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        return list(self._faults)

    def requests(
        self,
        origin: Origin | None = None,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.log
            if (origin is None or r.origin == origin)
            and (path_contains is None or path_contains in r.path)
            and (method is None or r.method == method.upper())
        ]

    def _candidates(
        self, hop: Literal["resolve", "cdn", "api"], body_hop: bool, path: str, method: str
    ) -> list[Fault]:
        """Unexhausted faults that target this hop; each is counted only if it takes effect."""
        found = []
        for f in self._faults:
            if f.exhausted or (f.path is not None and f.path not in path):
                continue
            if f.kind in _BODY_KINDS and (method != "GET" or not body_hop):
                continue
            if hop == "api":
                ok = f.origin == "api" and f.kind == "status"
            elif f.kind in ("expire", "bad_linked_etag"):
                ok = hop == "resolve" and f.origin != "api"
            elif f.kind == "redirect_loop":
                ok = f.origin == "cdn" if hop == "cdn" else f.origin in ("hub", "any")
            elif f.origin == "any":
                ok = body_hop
            else:
                ok = f.origin == ("hub" if hop == "resolve" else "cdn")
            if ok:
                found.append(f)
        return found

    @staticmethod
    def _take(faults: list[Fault], kind: FaultKind) -> Fault | None:
        for f in faults:
            if f.kind == kind:
                f.hits += 1
                return f
        return None

    def _recorder(self, origin: Origin) -> Middleware:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            arrived = time.time()
            exchange = request[_EXCHANGE] = _Exchange()
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            try:
                try:
                    response = await handler(request)
                except _Reply as reply:
                    response = reply.response
                exchange.status = response.status
                if not response.prepared and request.method != "HEAD":
                    exchange.bytes_sent = response.content_length or 0
                return response
            except web.HTTPException as exc:
                exchange.status = exc.status
                raise
            except Exception:
                exchange.status = 500
                raise
            finally:
                self._in_flight.discard(task)
                self.log.append(
                    RequestRecord(
                        time=arrived,
                        origin=origin,
                        method=request.method,
                        path=request.path,
                        query=request.query_string,
                        range=request.headers.get("Range"),
                        if_range=request.headers.get("If-Range"),
                        authorization="Authorization" in request.headers,
                        status=exchange.status,
                        bytes_sent=exchange.bytes_sent,
                        end=time.time(),
                    )
                )

        return record

    # -- access --------------------------------------------------------------------------------

    def _open(self, request: web.Request, *, content: bool) -> _Repo:
        """The repo named in the URL if this request may see it (content: may download files)."""
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        repo = self._repos.get(repo_id)
        token = _bearer_token(request)
        valid = token is not None and token in self.tokens
        if repo is None or (repo.private and not valid):
            # Like the real Hub: a private repo looks missing to outsiders, but as a 401.
            raise _error(
                404 if repo is None else 401,
                f"Repository Not Found for url: {request.url}. Please make sure you specified "
                "the correct `repo_id` and `repo_type`. If you are trying to access a private "
                "or gated repo, make sure you are authenticated.",
                "RepoNotFound",
            )
        if content and repo.gated and not (valid and token in self._grants.get(repo_id, ())):
            raise _error(
                403,
                f"Access to model {repo_id} is restricted and you are not in the authorized "
                "list. Visit the repo page to ask for access.",
                "GatedRepo",
            )
        return repo

    def _revision(self, repo: _Repo, rev: str) -> _Commit:
        commit = repo.find(rev)
        if commit is None:
            raise _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _api_faults(self, request: web.Request) -> None:
        fault = self._take(self._candidates("api", False, request.path, request.method), "status")
        if fault is not None:
            raise self._status_reply(fault)

    @staticmethod
    def _status_reply(fault: Fault) -> _Reply:
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        return _error(fault.status, f"injected fault: status {fault.status}", **headers)

    @staticmethod
    async def _ensure_hashed(blobs: Iterable[_Blob]) -> None:
        pending = [b for b in blobs if not b.hashed]
        if pending:
            # hashlib releases the GIL, so the loop keeps serving while a big file is hashed.
            await asyncio.to_thread(lambda: [b.digests() for b in pending])

    # -- API -----------------------------------------------------------------------------------

    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        self._api_faults(request)
        repo = self._open(request, content=False)
        commit = self._revision(repo, request.match_info.get("rev", "main"))
        with_blobs = _truthy(request.query.get("blobs"))
        if with_blobs:
            await self._ensure_hashed(commit.files.values())
        siblings: list[dict[str, object]] = []
        for path, blob in commit.files.items():
            sibling: dict[str, object] = {"rfilename": path}
            if with_blobs:
                digests = blob.digests()
                sibling |= {"blobId": digests.git_oid, "size": blob.size}
                if blob.lfs:
                    sibling["lfs"] = {
                        "sha256": digests.sha256,
                        "size": blob.size,
                        "pointerSize": digests.pointer_size,
                    }
            siblings.append(sibling)
        first = min(c.created for c in repo.commits.values())
        is_gguf = any(p.lower().endswith(".gguf") for p in commit.files)
        info: dict[str, object] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": request.match_info["owner"],
            "sha": commit.sha,
            "lastModified": _iso(commit.created),
            "createdAt": _iso(first),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,  # the real Hub: false | "auto" | "manual"
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"] if is_gguf else [],
            "siblings": siblings,
        }
        if is_gguf:
            info["library_name"] = "gguf"
        return _json_response(info)

    async def _tree(self, request: web.Request) -> web.StreamResponse:
        self._api_faults(request)
        repo = self._open(request, content=False)
        commit = self._revision(repo, request.match_info["rev"])
        cursor = _decode_cursor(request.query.get("cursor", ""))
        offset = 0
        if cursor is not None and cursor[0] in repo.commits:
            # The cursor pins the commit, so pages stay consistent while a branch moves.
            commit, offset = repo.commits[cursor[0]], max(0, cursor[1])
        base = request.match_info.get("path", "").strip("/")
        if base and base not in commit.directories:
            raise _error(
                404, f"{base} does not exist on {request.match_info['rev']}", "EntryNotFound"
            )
        recursive = _truthy(request.query.get("recursive"))
        paths = self._tree_paths(commit, base, recursive)
        page = paths[offset : offset + max(1, self.page_size)]
        await self._ensure_hashed(commit.files[p] for p in page if p in commit.files)
        headers: dict[str, str] = {}
        if offset + len(page) < len(paths):
            nxt = request.url.update_query(cursor=_encode_cursor(commit.sha, offset + len(page)))
            headers["Link"] = f'<{nxt}>; rel="next"'
        return _json_response([await self._tree_entry(commit, p) for p in page], headers=headers)

    @staticmethod
    def _tree_paths(commit: _Commit, base: str, recursive: bool) -> list[str]:
        prefix = f"{base}/" if base else ""
        everything = sorted([*commit.files, *commit.directories])
        if recursive:
            return [p for p in everything if p.startswith(prefix)]
        return [p for p in everything if p.startswith(prefix) and "/" not in p[len(prefix) :]]

    async def _tree_entry(self, commit: _Commit, path: str) -> dict[str, object]:
        blob = commit.files.get(path)
        if blob is None:
            members = [(p, b) for p, b in commit.files.items() if p.startswith(path + "/")]
            await self._ensure_hashed(b for _, b in members)
            listing = "\n".join(f"{p} {b.digests().git_oid}" for p, b in members)
            oid = hashlib.sha1(b"tree\0" + listing.encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        digests = blob.digests()
        entry: dict[str, object] = {
            "type": "file",
            "oid": digests.git_oid,
            "size": blob.size,
            "path": path,
        }
        if blob.lfs:
            entry["lfs"] = {
                "oid": digests.sha256,
                "size": blob.size,
                "pointerSize": digests.pointer_size,
            }
        return entry

    # -- resolve (Hub) and the CDN -------------------------------------------------------------

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._open(request, content=True)
        rev, path = request.match_info["rev"], request.match_info["path"]
        commit = self._revision(repo, rev)
        blob = commit.files.get(path)
        if blob is None:
            raise _error(
                404,
                f"{path} does not exist on {rev}",
                "EntryNotFound",
                **{"X-Repo-Commit": commit.sha},
            )
        await self._ensure_hashed([blob])
        digests = blob.digests()
        faults = self._candidates("resolve", not blob.lfs, path, request.method)
        if (fault := self._take(faults, "status")) is not None:
            raise self._status_reply(fault)
        if self._take(faults, "redirect_loop") is not None:
            return _redirect(str(request.url))
        if not blob.lfs:
            headers = {"ETag": f'"{digests.git_oid}"', "X-Repo-Commit": commit.sha}
            return await self._serve_body(request, blob, headers, faults)
        now = time.time()
        expire = self._take(faults, "expire")
        expires = f"{now + (expire.seconds if expire else _FAR_FUTURE):.3f}"
        linked = digests.sha256
        if self._take(faults, "bad_linked_etag") is not None:
            linked = hashlib.sha256(b"not-the-content\0" + linked.encode()).hexdigest()
        target = f"{repo.repo_id}/{commit.sha}/{path}"
        cdn = self.cdn_public_url or self.cdn_endpoint
        location = (
            f"{cdn}/cdn/{repo.repo_id}/{commit.sha}/{quote(path)}"
            f"?expires={expires}&signature={_sign(target, expires)}"
        )
        return _redirect(
            location,
            ETag=f'"{digests.git_oid}"',
            **{
                "X-Linked-Etag": f'"{linked}"',
                "X-Linked-Size": str(blob.size),
                "X-Repo-Commit": commit.sha,
            },
        )

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        path = request.match_info["path"]
        repo = self._repos.get(repo_id)
        commit = repo.commits.get(request.match_info["commit"]) if repo else None
        blob = commit.files.get(path) if commit else None
        if blob is None or commit is None:
            raise _error(404, "Not Found")
        expires = request.query.get("expires", "")
        if request.query.get("signature") != _sign(f"{repo_id}/{commit.sha}/{path}", expires):
            raise _error(403, "Invalid signature")
        if time.time() > float(expires):  # a valid signature implies a well-formed float
            raise _error(403, "Request has expired")
        faults = self._candidates("cdn", True, path, request.method)
        if (fault := self._take(faults, "status")) is not None:
            raise self._status_reply(fault)
        if self._take(faults, "redirect_loop") is not None:
            return _redirect(str(request.url))
        return await self._serve_body(request, blob, {"ETag": blob.cdn_etag}, faults)

    async def _serve_body(
        self, request: web.Request, blob: _Blob, headers: dict[str, str], faults: list[Fault]
    ) -> web.StreamResponse:
        size = blob.size
        headers = {**headers, "Accept-Ranges": "bytes"}
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        wanted: tuple[int, int] | _Unsatisfiable | None = None
        if range_header is not None and (if_range is None or if_range == headers["ETag"]):
            wanted = _parse_range(range_header, size)
        if wanted is not None and self._take(faults, "ignore_range") is not None:
            wanted = None
        if wanted == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{size}"
            raise _error(416, "Range Not Satisfiable", **headers)
        start, end = wanted if isinstance(wanted, tuple) else (0, size)
        response = web.StreamResponse(
            status=206 if isinstance(wanted, tuple) else 200, headers=headers
        )
        if isinstance(wanted, tuple):
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        exchange = request[_EXCHANGE]
        exchange.status = response.status
        await response.prepare(request)
        if request.method != "HEAD":
            try:
                await self._write_body(request, response, blob, start, end, faults)
            except ConnectionResetError:
                # The client went away mid-body (a paused or cancelled transfer, a segment
                # handed to another connection): normal for a download server, not an error.
                return response
        return response

    async def _write_body(
        self,
        request: web.Request,
        response: web.StreamResponse,
        blob: _Blob,
        start: int,
        end: int,
        faults: list[Fault],
    ) -> None:
        total = end - start
        exchange = request[_EXCHANGE]

        def take_cut(kind: FaultKind) -> Fault | None:
            usable = [f for f in faults if f.kind == kind and f.after_bytes < total]
            return self._take(usable, kind)

        stall, truncate, reset = take_cut("stall"), take_cut("truncate"), take_cut("reset")
        corrupt = self._take([f for f in faults if start <= f.after_bytes < end], "corrupt")
        throttle = self._take(faults, "throttle")
        rate = throttle.rate if throttle is not None else None
        piece = _PIECE if rate is None else max(1, min(64 << 10, int(rate / 16)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        pos = 0
        while True:
            if stall is not None and pos == stall.after_bytes:
                await asyncio.sleep(stall.seconds)
                stall = None
            if truncate is not None and pos == truncate.after_bytes:
                _close_after_flush(request)
                return
            if reset is not None and pos == reset.after_bytes:
                await _reset_connection(request)
                return
            if pos >= total:
                return
            limit = min(piece, total - pos)
            for cut in (stall, truncate, reset):
                if cut is not None and cut.after_bytes > pos:
                    limit = min(limit, cut.after_bytes - pos)
            data: memoryview | bytearray = blob.view(start + pos, limit)
            if corrupt is not None and start + pos <= corrupt.after_bytes < start + pos + len(data):
                data = bytearray(data)
                data[corrupt.after_bytes - start - pos] ^= 0xFF
            if rate is not None:
                # A bucket that starts empty: n bytes may leave only once n/rate seconds passed.
                delay = began + (pos + len(data)) / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await response.write(data)
            pos += len(data)
            exchange.bytes_sent = pos


def _redirect(location: str, **headers: str) -> web.Response:
    # An explicit Content-Length: 0, also on HEAD (aiohttp would omit it there).
    return web.Response(
        status=302, headers={"Location": location, **headers, "Content-Length": "0"}
    )


def _sign(target: str, expires: str) -> str:
    return hashlib.sha256(_SIGNING_KEY + f"\0{target}\0{expires}".encode()).hexdigest()[:40]


def _close_after_flush(request: web.Request) -> None:
    """End the connection with a FIN mid-body (asyncio flushes its buffer before closing)."""
    if request.transport is not None:
        request.transport.close()


async def _reset_connection(request: web.Request) -> None:
    """Abort with an RST once what was written has reached the kernel."""
    transport = request.transport
    if transport is None:
        return
    # asyncio has no "flushed" notification; poll briefly (bounded) so the peer can get exactly
    # the bytes we counted before the RST discards anything still queued.
    for _ in range(500):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.002)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0 turns close() into a TCP RST instead of an orderly FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# ---------------------------------------------------------------------------------------------
# Standalone demo server
# ---------------------------------------------------------------------------------------------


def add_sample_repo(hub: FakeHub, repo_id: str = SAMPLE_REPO) -> str:
    """A small GGUF repo: a 2-shard Q4_K_M set in a folder, a Q8_0 file, an mmproj file, a
    config and a README. Returns the commit sha."""
    mib = 1 << 20
    readme = (
        f"---\nlibrary_name: gguf\nlicense: mit\n---\n# {repo_id}\n\n"
        "Generated by modelfetch.testing.fakehub: deterministic bytes, not a real model.\n"
    )
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_parameters": 1}
    return hub.add_repo(
        repo_id,
        [
            RepoFile("Q4_K_M/tiny-Q4_K_M-00001-of-00002.gguf", size=3 * mib, seed=41),
            RepoFile("Q4_K_M/tiny-Q4_K_M-00002-of-00002.gguf", size=2 * mib + 12_345, seed=42),
            RepoFile("tiny-Q8_0.gguf", size=5 * mib + 321, seed=80),
            RepoFile("mmproj-tiny-F16.gguf", size=mib + 777, seed=16),
            RepoFile("config.json", content=json.dumps(config, indent=2).encode() + b"\n"),
            RepoFile("README.md", content=readme.encode()),
        ],
    )


async def _serve_forever(port: int, cdn_port: int, tokens: Sequence[str]) -> None:
    async with FakeHub(port=port, cdn_port=cdn_port) as hub:
        hub.tokens.update(tokens)
        sha = add_sample_repo(hub)
        print(f"endpoint: {hub.endpoint}", flush=True)
        print(f"cdn: {hub.cdn_endpoint}", flush=True)
        print(f"repo: {SAMPLE_REPO} @ {sha}", flush=True)
        print(f"try: HF_ENDPOINT={hub.endpoint} ... ; Ctrl-C to stop", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Explicit handlers also work when the shell started us with SIGINT ignored.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelfetch.testing.fakehub",
        description="Serve a fake Hugging Face Hub (and its CDN) on 127.0.0.1 with a sample repo.",
    )
    parser.add_argument("--port", type=int, default=8090, help="Hub port (0 = any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0 = any free port)")
    parser.add_argument("--token", action="append", default=[], help="a token to accept")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.port, args.cdn_port, args.token))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
