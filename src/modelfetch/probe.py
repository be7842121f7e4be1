"""Probing a plain URL before it is queued: a HEAD (following redirects) for its name and size.

A probe is a request like any other: it waits out its host's hold first, and a 429 or 503 with
`Retry-After` holds the host (for the transfers too, `transfer/holds.py`) and is asked again
once the wait is over, when the wait is short enough to make the user wait for the plan; a
longer one is left to the transfer, which waits as asked. Anything else a probe cannot learn
(an odd status, no answer) falls back to the URL's own name: the transfer finds out and says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin, urlsplit

from modelfetch.core.errors import NotFoundError
from modelfetch.core.headers import (
    content_disposition_filename,
    parse_content_length,
    retry_after_seconds,
)
from modelfetch.core.spec import filename_from_url
from modelfetch.transfer.holds import HostHolds, host_key

if TYPE_CHECKING:
    import aiohttp

    from modelfetch.transfer import TransferSession

__all__ = ["HEAD_SECONDS", "UrlProber", "hold_if_asked"]

HEAD_SECONDS: Final = 15.0  # one probe request, connecting included
_PROBE_REQUESTS: Final = 10  # the first HEAD and up to 9 redirects or waits
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_PROBE_SCHEMES: Final = frozenset({"http", "https"})
# The longest wait a probe sits out to learn a size; a longer one is the transfer's to wait.
_PROBE_MAX_WAIT: Final = 60.0


def hold_if_asked(
    holds: HostHolds, url: str, status: int, headers: Mapping[str, str], what: str
) -> float | None:
    """A 429/503 that says how long to wait holds the URL's host that long; the seconds."""
    if status not in (429, 503):
        return None
    wait = retry_after_seconds(headers, time.time())
    if wait is not None:
        holds.hold(host_key(url), time.time() + wait, f"{status} to {what}")
    return wait


class _Again:
    """The probe's answer: ask the same URL again once its host's hold is over."""


class UrlProber:
    """HEAD requests for plain URLs, through the transfers' client or an aiohttp session."""

    def __init__(
        self,
        api_session: Callable[[], aiohttp.ClientSession],
        probe_session: TransferSession | None,
        holds: HostHolds,
    ) -> None:
        self._api_session = api_session
        self._probe_session = probe_session
        self._holds = holds

    async def probe(self, url: str) -> tuple[str, int | None]:
        """The URL's file name and size (None: unknown). No token is sent: a plain URL is not
        the Hub's, and a redirect may lead anywhere. NotFoundError for a 404 or 410."""
        fallback = filename_from_url(url)
        if self._probe_session is not None:
            return await self._with_wire(self._probe_session, url, fallback)
        return await self._with_aiohttp(url, fallback)

    async def _with_wire(
        self, session: TransferSession, url: str, fallback: str
    ) -> tuple[str, int | None]:
        from modelfetch.transfer.wire import WireError

        current = url
        try:
            for _ in range(_PROBE_REQUESTS):
                if urlsplit(current).scheme.lower() not in _PROBE_SCHEMES:
                    break  # not ours to follow; the transfer refuses it with a clear error
                await self._holds.wait(host_key(current))
                async with asyncio.timeout(HEAD_SECONDS):
                    response = await session.request("HEAD", current)
                response.release()  # a HEAD has no body: the connection goes back at once
                hop = self._answer(url, current, response.status, response.headers)
                if isinstance(hop, _Again):
                    continue
                if isinstance(hop, str):
                    current = urljoin(current, hop)
                    continue
                return hop
        except (WireError, OSError, TimeoutError):
            pass  # unknown: the transfer will find out and say so
        return fallback, None

    async def _with_aiohttp(self, url: str, fallback: str) -> tuple[str, int | None]:
        import aiohttp
        from yarl import URL

        timeout = aiohttp.ClientTimeout(total=HEAD_SECONDS)
        current = url
        try:
            for _ in range(_PROBE_REQUESTS):
                await self._holds.wait(host_key(current))
                async with self._api_session().head(
                    current, allow_redirects=False, timeout=timeout
                ) as resp:
                    hop = self._answer(url, current, resp.status, resp.headers)
                    if isinstance(hop, _Again):
                        continue
                    if isinstance(hop, str):
                        current = str(resp.url.join(URL(hop)))
                        continue
                    return hop
        except (aiohttp.ClientError, TimeoutError):
            pass
        return fallback, None

    def _answer(
        self, url: str, current: str, status: int, headers: Mapping[str, str]
    ) -> str | _Again | tuple[str, int | None]:
        """What one probe response says: where to go next (a Location, not yet joined), to
        ask again after a hold, or the file name and size. 404 and 410 are definite:
        NotFoundError naming the URL asked for."""
        wait = hold_if_asked(self._holds, current, status, headers, "a HEAD probe")
        if wait is not None and wait <= _PROBE_MAX_WAIT:
            return _Again()
        if status in _REDIRECTS and "Location" in headers:
            return headers["Location"].strip()
        if status in (404, 410):
            raise NotFoundError(f"{url} was not found ({status})", status=status, url=url)
        fallback = filename_from_url(url)
        if status >= 400:
            return fallback, None  # let the transfer and the policy judge it
        name = content_disposition_filename(headers.get("Content-Disposition"))
        size = parse_content_length(headers.get("Content-Length"))
        return (name or filename_from_url(current) or fallback), size
