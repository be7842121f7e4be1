"""Where a transfer's requests go: redirects by our own rules, and where the Hub token may go.

The HTTP client (transfer/wire/) never follows redirects; `_request` does, hop by hop: at most
`TransferRequest.max_redirects` hops, each hop's scheme in `allowed_schemes` (and its host in
`allowed_hosts`, when given), relative `Location`s resolved against the hop that sent them. The
token goes only where `may_authenticate` says, asked afresh at every hop (a redirect to the CDN
never carries it). The Hub's `X-Linked-*` and `X-Repo-Commit` headers are read from the hop that
sends them (the resolve hop; the CDN's own ETag never describes the file). The connection slot
follows the body: it is counted against the host that serves it (`_move_slot`).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin, urlsplit

from modelfetch.core.errors import NetworkError, SchemeError, TooManyRedirectsError
from modelfetch.core.headers import linked_digest, origin_of, parse_content_length
from modelfetch.transfer.failures import redact_url
from modelfetch.transfer.limiter import Slot
from modelfetch.transfer.session import TransferSession
from modelfetch.transfer.state import TransferState
from modelfetch.transfer.wire import Headers, Response


def may_authenticate(session: TransferSession, url: str, token_origin: str | None) -> bool:
    """Whether the Hub token may be sent with a request to `url`: only to the origin (scheme,
    host, port) it belongs to (`token_origin`; None: there is no token), and never where a
    proxy could read it: a plain-http request through a proxy is readable by the proxy (https
    goes through a CONNECT tunnel, inside TLS). The one place that decides it; every hop of
    every request asks."""
    if token_origin is None:
        return False
    try:
        if origin_of(url) != token_origin:
            return False
    except ValueError:
        return False
    return not (url[:5].lower() == "http:" and session.proxy_for(url) is not None)


def host_of(url: str) -> str:
    """The key of the per-host connection cap: scheme-less host[:port], lowercased."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


class RequestingTransfer(TransferState):
    """A transfer's requests: GET with our redirect rules, and the connection slot they hold."""

    async def _request(
        self,
        offset: int,
        *,
        end: int | None = None,
        url: str | None = None,
        validator: str | None = None,
    ) -> tuple[Response, bool]:
        """GET, following up to `max_redirects` redirects by hand. Returns the first non-redirect
        response (unread) and whether it was reached through a redirect. Asks for bytes from
        `offset` (to `end`, exclusive, when given), with `If-Range: validator` (by default the
        partial's); starts at `url` (by default the request's)."""
        conditional: dict[str, str] = {}
        if offset > 0 or end is not None:
            conditional["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
            if validator is None and self.state is not None:
                validator = self.state.validator
            if validator:
                conditional["If-Range"] = validator
        url = url or self.request.url
        redirected = False
        for _ in range(self.request.max_redirects + 1):
            self.url = url
            scheme = urlsplit(url).scheme.lower()
            if scheme not in self.request.allowed_schemes:
                raise SchemeError(
                    f"refusing to fetch a {scheme or 'relative'} URL", url=redact_url(url)
                )
            allowed_hosts = self.request.allowed_hosts
            host = (urlsplit(url).hostname or "").lower()
            if allowed_hosts is not None and host not in allowed_hosts:
                raise SchemeError(
                    f"refusing to fetch from {host or 'no host'}: only"
                    f" {', '.join(sorted(allowed_hosts))} allowed",
                    url=redact_url(url),
                )
            headers = dict(conditional)
            if (
                may_authenticate(self.session, url, self.auth_origin)
                and self.request.credentials is not None
            ):
                headers["Authorization"] = f"Bearer {self.request.credentials.token}"
            async with asyncio.timeout(self.stall_timeout):  # also bounds waiting for the head
                response = await self.session.request(
                    "GET",
                    url,
                    headers=headers,
                    connect_timeout=self.request.connect_timeout,
                    recv_size=self._limited_recv_size(),
                )
            self._note_hub_headers(response.headers)
            if 300 <= response.status < 400 and response.status != 304:
                location = response.headers.get("Location")
                response.release()
                # The Hub's hop already says what file it is: a contradiction of the plan fails
                # here, before a request to the CDN starts sending the body.
                self._cross_check_plan()
                if not location:
                    raise NetworkError(
                        f"HTTP {response.status} redirect without a Location", url=redact_url(url)
                    )
                url = urljoin(url, location.strip())
                redirected = True
                continue
            return response, redirected
        raise TooManyRedirectsError(
            f"more than {self.request.max_redirects} redirects", url=redact_url(url)
        )

    def _note_hub_headers(self, headers: Headers) -> None:
        """The Hub's resolve hop describes the file; the CDN's own ETag never does."""
        if self.linked_sha256 is None:
            self.linked_sha256 = linked_digest(headers.get("X-Linked-Etag"))
        if self.linked_size is None:
            self.linked_size = parse_content_length(headers.get("X-Linked-Size"))
        if self.repo_commit is None:
            commit = (headers.get("X-Repo-Commit") or "").strip()
            self.repo_commit = commit or None

    async def _acquire_slot(self, url: str) -> Slot | None:
        return None if self.slots is None else await self.slots.acquire(host_of(url))

    async def _move_slot(self, url: str) -> None:
        """The body comes from `url` (after redirects): count the connection against that
        host's cap, so the caps hold as the serving host sees them."""
        slot = self.slot
        if slot is not None and slot.host != host_of(url):
            self.slot = None
            slot.release()
            self.slot = await self._acquire_slot(url)
