"""A small client for the Hugging Face Hub API: pin a revision to a commit, list its files.

Everything a download needs comes from two requests (plus tree pages): `revision/{rev}` gives
the commit sha, and the tree listed *at that sha* gives every file with its size, sha256 (LFS)
and git blob id. Resolve URLs are built on the same sha, so a branch that moves mid-download
cannot mix files from two commits.

Errors are the typed ones from `core.errors`, with messages a person can act on; a token is
never part of a message or a repr. The token is sent only to the endpoint's origin (scheme,
host, port): not to a pagination link or a redirect elsewhere.

Metadata requests are retried here (they are cheap and the user is waiting): network errors
and 5xx up to 3 more times after 0.5, 1 and 2 s; a 429/503 with `Retry-After` is retried after
that long when it is at most 30 s; other 4xx never. A response that is not the JSON we expect
(or a listing that names a file twice) is a `NetworkError` with a clear message: it is protocol
garbage from the server or something in between, not a bug of ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from modelfetch.core.errors import (
    ConnectFailedError,
    HTTPStatusError,
    HubProtocolError,
    NetworkError,
    ProxyError,
    RateLimitedError,
    SpecError,
    TooManyRedirectsError,
)
from modelfetch.core.headers import origin_of
from modelfetch.core.proxy import Proxy, ProxyRules
from modelfetch.core.quant import QuantGroup, group_gguf_files
from modelfetch.core.spec import validate_repo_id
from modelfetch.hub_errors import hub_status_error
from modelfetch.hub_session import USER_AGENT, make_api_session
from modelfetch.hubconfig import HubConfig, hub_config_from_env
from modelfetch.transfer.holds import HostHolds, host_key

__all__ = [
    "HubClient",
    "HubConfig",
    "RepoFileEntry",
    "ResolvedRepo",
    "hub_config_from_env",
    "make_api_session",
]

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_SIZE = 1 << 50  # 1 PiB: no model file is larger; beyond it a listed size is a lie
_MAX_BODY = 64 << 20  # a tree page is kilobytes; refuse to buffer a runaway body


# --- errors through a proxy ------------------------------------------------------------------


def _proxy_refused(proxy: Proxy, url: URL, status: int, reason: str) -> ProxyError:
    wants = " (it wants credentials: put them in the proxy URL)" if status == 407 else ""
    return ProxyError(
        f"the proxy {proxy.url()} refused the request to {_origin(url)}: {status} {reason}".rstrip()
        + wants,
        status=status,
        url=str(url),
    )


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepoFileEntry:
    """One file of a repo at a commit, as the tree API lists it."""

    path: str
    size: int
    sha256: str | None  # lfs.oid (lowercase hex) for LFS files; None for small git files
    git_oid: str  # the git blob sha1 (for an LFS file: of its pointer file)
    lfs: bool


@dataclass(frozen=True, slots=True)
class ResolvedRepo:
    """A revision pinned to its commit, with every file at that commit (sorted by path)."""

    repo_id: str
    revision: str  # what was asked for ("main", a tag, a sha)
    commit: str  # the 40-hex sha it pointed at
    files: tuple[RepoFileEntry, ...]
    gated: bool = False  # file downloads need a token whose account accepted the terms

    def find(self, path: str) -> RepoFileEntry | None:
        """The entry for `path`, or None if the commit has no such file."""
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def quant_groups(self) -> list[QuantGroup]:
        """The GGUF files grouped by quantization (see `core.quant.group_gguf_files`)."""
        return group_gguf_files((f.path, f.size) for f in self.files)


# --- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]
    url: URL  # the hop that answered


@dataclass(frozen=True, slots=True)
class _What:
    """What a request was about, for messages."""

    repo_id: str
    revision: str | None = None
    description: str = "metadata"


Sleep = Callable[[float], Awaitable[None]]


class HubClient:
    """Hub API calls over a caller-owned `aiohttp.ClientSession`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: HubConfig,
        *,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0),
        max_retry_after: float = 30.0,
        timeout: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        proxies: ProxyRules | None = None,
        holds: HostHolds | None = None,
    ) -> None:
        """`holds`: the hosts that asked to wait, shared with the transfers (a 429/503 with
        Retry-After on an API call holds its host for them too); its own when None."""
        self._session = session
        self._holds = HostHolds() if holds is None else holds
        self._waited: dict[str, float] = {}  # host -> the end of the hold this client slept out
        self._proxies = ProxyRules.from_env(os.environ) if proxies is None else proxies
        self._config = config
        self._origin = config.origin
        self._retry_delays = tuple(retry_delays)
        self._max_retry_after = max_retry_after
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sleep = sleep
        self._clock = clock

    @property
    def config(self) -> HubConfig:
        return self._config

    # -- public API ------------------------------------------------------------------------------

    async def revision_sha(self, repo_id: str, revision: str = "main") -> str:
        """The commit sha `revision` (branch, tag or sha) points at now."""
        sha, _ = await self._revision_info(repo_id, revision)
        return sha

    async def _revision_info(self, repo_id: str, revision: str) -> tuple[str, bool]:
        _check_repo_id(repo_id)
        what = _What(repo_id, revision, f"revision {revision} of {repo_id}")
        url = f"{self._api(repo_id)}/revision/{quote(revision, safe='')}"
        data, _ = await self._get_json(url, what)
        if not isinstance(data, dict):
            raise self._malformed(url, what, "expected a JSON object")
        sha = data.get("sha")
        # Unlike gglib, a missing sha is an error, never "main": the point is to pin.
        if not isinstance(sha, str) or not _HEX40.fullmatch(sha):
            raise self._malformed(url, what, "no commit sha in the answer")
        gated = data.get("gated", False) not in (False, None)  # "auto" / "manual" when gated
        return sha, gated

    async def list_files(self, repo_id: str, commit: str) -> list[RepoFileEntry]:
        """Every file (not directories) at `commit`, recursively, following `Link: rel="next"`
        pages; sorted by path. A path listed twice is a `NetworkError` (a broken listing)."""
        _check_repo_id(repo_id)
        what = _What(repo_id, commit, f"the file list of {repo_id} at {commit}")
        url: str | None = f"{self._api(repo_id)}/tree/{quote(commit, safe='')}?recursive=true"
        seen_pages: set[str] = set()
        files: dict[str, RepoFileEntry] = {}
        while url is not None:
            if url in seen_pages:
                raise self._malformed(url, what, "its pages link back to an earlier page")
            seen_pages.add(url)
            data, next_url = await self._get_json(url, what)
            if not isinstance(data, list):
                raise self._malformed(url, what, "expected a JSON list of entries")
            for item in data:
                entry = self._tree_entry(item, url, what)
                if entry is None:
                    continue
                if entry.path in files:
                    raise self._malformed(url, what, f"it lists {entry.path!r} twice")
                files[entry.path] = entry
            url = next_url
        return sorted(files.values(), key=lambda e: e.path)

    async def resolve(self, repo_id: str, revision: str = "main") -> ResolvedRepo:
        """Pin `revision` to its commit, then list the files *at that commit*."""
        commit, gated = await self._revision_info(repo_id, revision)
        files = await self.list_files(repo_id, commit)
        return ResolvedRepo(repo_id, revision, commit, tuple(files), gated=gated)

    def resolve_url(self, repo_id: str, commit: str, path: str) -> str:
        """`{endpoint}/{repo}/resolve/{commit}/{path}`, path percent-encoded except `/`."""
        return (
            f"{self._config.endpoint}/{repo_id}/resolve/"
            f"{quote(commit, safe='')}/{quote(path, safe='/')}"
        )

    async def check_file_access(self, repo_id: str, commit: str, path: str) -> None:
        """Whether this client's token (or none) may download `path`: a HEAD of its resolve
        URL, redirects not followed (the answer to the first hop says it). An error status
        raises the typed error with the Hub's `status` and `error_code` (e.g. 403 GatedRepo)."""
        _check_repo_id(repo_id)
        what = _What(repo_id, commit, path)
        url = URL(self.resolve_url(repo_id, commit, path), encoded=True)
        await self._honour_hold(str(url))
        reply = await self._get_once(url, method="HEAD")
        if reply.status >= 400:
            error = self._status_error(reply, what)
            self._hold_as_asked(error, str(url), "an access check")
            raise error

    async def quants(self, repo_id: str, revision: str = "main") -> list[QuantGroup]:
        """The quantizations `revision` offers, with sizes and shard counts."""
        return (await self.resolve(repo_id, revision)).quant_groups()

    # -- requests --------------------------------------------------------------------------------

    def _api(self, repo_id: str) -> str:
        return f"{self._config.endpoint}/api/models/{repo_id}"

    async def _get_json(self, url: str, what: _What) -> tuple[Any, str | None]:
        """GET with retries; the decoded JSON and the next page's URL (if any)."""
        reply = await self._with_retries(url, what)
        try:
            data = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: absurd nesting
            kind = reply.headers.get("Content-Type", "no content type")
            raise self._malformed(
                str(reply.url),
                what,
                f"the answer is not JSON ({kind}); is HF_ENDPOINT a Hugging Face Hub?",
            ) from None
        return data, _next_link(reply.headers.get("Link"), reply.url)

    async def _with_retries(self, url: str, what: _What) -> _Reply:
        attempt = 0
        while True:
            try:
                return await self._get_following_redirects(url, what)
            except (NetworkError, HTTPStatusError) as exc:
                if isinstance(exc, HTTPStatusError):
                    held = self._hold_as_asked(exc, exc.url or url, "a Hub API call")
                    wait = exc.retry_after
                    if held is not None and wait is not None and wait <= self._max_retry_after:
                        self._waited[held[0]] = held[1]  # the retry below sleeps it out
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
            attempt += 1
            await self._sleep(delay)

    def _retry_delay(self, exc: NetworkError | HTTPStatusError, attempt: int) -> float | None:
        if attempt >= len(self._retry_delays):
            return None
        if isinstance(exc, NetworkError):
            return self._retry_delays[attempt]
        if exc.status != 429 and exc.status < 500:
            return None
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= self._max_retry_after else None
        return None if exc.status == 429 else self._retry_delays[attempt]

    async def _get_following_redirects(self, url: str, what: _What) -> _Reply:
        current = URL(url, encoded=True)
        for _ in range(_MAX_REDIRECTS + 1):
            await self._honour_hold(str(current))
            reply = await self._get_once(current)
            if reply.status in _REDIRECTS:
                location = reply.headers.get("Location")
                if not location:
                    raise NetworkError(
                        f"{self._config.endpoint} sent a redirect without a Location",
                        url=str(current),
                    )
                current = current.join(URL(location, encoded=True))
                continue
            if reply.status >= 400:
                raise self._status_error(reply, what)
            if reply.status != 200:
                raise self._malformed(str(current), what, f"unexpected HTTP {reply.status}")
            return reply
        raise TooManyRedirectsError(
            f"more than {_MAX_REDIRECTS} redirects fetching {what.description}", url=url
        )

    def _hold_as_asked(
        self, error: HTTPStatusError, url: str, what: str
    ) -> tuple[str, float] | None:
        """A status that says how long to wait holds the URL's host that long, for every
        request sharing the holds (this client's next try, the transfers'); (host, until)."""
        if error.retry_after is None:
            return None
        host, until = host_key(url), self._clock() + error.retry_after
        self._holds.hold(host, until, f"{error.status} to {what}")
        return host, until

    async def _honour_hold(self, url: str) -> None:
        """Wait out a hold on the URL's host (a 429/503 asked for it, to this client or to a
        transfer); a wait longer than `max_retry_after` is left to the caller, at once."""
        host = host_key(url)
        until = self._holds.until(host, self._clock())
        if until is None or until <= self._waited.get(host, 0.0):
            return
        remaining = until - self._clock()
        if remaining > self._max_retry_after:
            raise RateLimitedError(
                f"{host} asked to wait {remaining:.0f} s more before the next request",
                status=429,
                url=url,
                retry_after=remaining,
            )
        await self._sleep(remaining)
        self._waited[host] = until

    async def _get_once(self, url: URL, method: str = "GET") -> _Reply:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        proxy = self._proxies.proxy_for(str(url))
        # Through a proxy, plain http is readable by it: the token goes only inside a tunnel.
        readable_by_proxy = proxy is not None and url.scheme == "http"
        if (
            self._config.token is not None
            and _origin(url) == self._origin
            and not readable_by_proxy
        ):
            headers["Authorization"] = f"Bearer {self._config.token}"
        via: dict[str, Any] = {}
        if proxy is not None:
            via["proxy"] = proxy.url()
            if proxy.username is not None:
                via["proxy_auth"] = aiohttp.BasicAuth(proxy.username, proxy.password or "")
        try:
            async with self._session.request(
                method, url, headers=headers, allow_redirects=False, timeout=self._timeout, **via
            ) as resp:
                body = await _read_capped(resp)
                if proxy is not None and resp.status == 407:  # (plain http: the proxy answers)
                    raise _proxy_refused(proxy, url, 407, resp.reason or "")
                return _Reply(resp.status, body, resp.headers, url)
        except aiohttp.ClientHttpProxyError as exc:  # its answer to CONNECT
            assert proxy is not None
            if 500 <= exc.status <= 599:
                raise NetworkError(
                    f"the proxy {proxy.url()} could not reach {_origin(url)}: {exc.status}",
                    url=str(url),
                ) from None
            raise _proxy_refused(proxy, url, exc.status, exc.message) from None
        except aiohttp.ClientProxyConnectionError as exc:
            assert proxy is not None
            reason = str(exc.os_error) if exc.os_error else type(exc).__name__
            raise NetworkError(
                f"cannot connect to proxy {proxy.url()}: {reason}", url=str(url)
            ) from None
        except aiohttp.ClientConnectorError as exc:
            if not isinstance(exc.os_error, ConnectionRefusedError):
                reason = str(exc) or type(exc).__name__
                raise NetworkError(f"cannot reach {_origin(url)}: {reason}", url=str(url)) from None
            # Nothing listens there: most often a wrong HF_ENDPOINT (or a mirror that is down).
            raise ConnectFailedError(
                f"cannot reach {_origin(url)}: connection refused; is HF_ENDPOINT "
                f"({self._config.endpoint}) right, and is that server running?",
                host=f"{exc.host}:{exc.port}",
                refused=True,
                url=str(url),
            ) from None
        except TimeoutError:
            raise NetworkError(
                f"no answer from {_origin(url)} within {self._timeout.total:g} s", url=str(url)
            ) from None
        except aiohttp.ClientError as exc:
            reason = str(exc) or type(exc).__name__
            raise NetworkError(f"cannot reach {_origin(url)}: {reason}", url=str(url)) from None

    # -- errors ----------------------------------------------------------------------------------

    def _malformed(self, url: str, what: _What, problem: str) -> NetworkError:
        return HubProtocolError(
            f"{self._config.endpoint} sent a malformed answer for {what.description}: {problem}",
            url=url,
        )

    def _status_error(self, reply: _Reply, what: _What) -> HTTPStatusError:
        return hub_status_error(
            reply.status,
            reply.headers,
            str(reply.url),
            repo_id=what.repo_id,
            revision=what.revision,
            description=what.description,
            endpoint=self._config.endpoint,
            has_token=self._config.token is not None,
            now=self._clock(),
        )

    # -- parsing ---------------------------------------------------------------------------------

    def _tree_entry(self, item: object, url: str, what: _What) -> RepoFileEntry | None:
        if not isinstance(item, dict):
            raise self._malformed(url, what, "a tree entry is not an object")
        kind = item.get("type", "file")
        if kind != "file":
            return None  # directories (and anything newer we do not know)
        path, size, oid, lfs = item.get("path"), item.get("size"), item.get("oid"), item.get("lfs")
        if not isinstance(path, str) or not path:
            raise self._malformed(url, what, "a tree entry has no path")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE:
            raise self._malformed(url, what, f"{path!r} has no valid size")
        if not isinstance(oid, str) or not _HEX40.fullmatch(oid.lower()):
            raise self._malformed(url, what, f"{path!r} has no valid git oid")
        sha256: str | None = None
        if lfs is not None:
            lfs_oid = lfs.get("oid") if isinstance(lfs, dict) else None
            if not isinstance(lfs_oid, str) or not _HEX64.fullmatch(lfs_oid):
                raise self._malformed(url, what, f"{path!r} has no valid LFS sha256")
            sha256 = lfs_oid.lower()
        return RepoFileEntry(path, size, sha256, oid.lower(), lfs is not None)


def _check_repo_id(repo_id: str) -> None:
    problem = validate_repo_id(repo_id)
    if problem is not None:
        raise SpecError(f"not a repo id: {repo_id!r} ({problem})")


def _origin(url: URL) -> str:
    try:
        return origin_of(str(url))
    except ValueError:
        return ""


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > _MAX_BODY:
            raise NetworkError(
                f"the answer is larger than {_MAX_BODY >> 20} MiB", url=str(resp.url)
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _next_link(value: str | None, base: URL) -> str | None:
    """The `rel="next"` target of a Link header, resolved against `base` (it may be relative)."""
    if not value:
        return None
    for target, params in _LINK.findall(value):
        for param in params.split(";"):
            key, _, raw = param.strip().partition("=")
            rels = raw.strip().strip('"').lower().split()
            if key.strip().lower() == "rel" and "next" in rels:
                return str(base.join(URL(target.strip(), encoded=True)))
    return None
