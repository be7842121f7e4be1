"""What went wrong, in our error tree: HTTP statuses and the client's and the OS's exceptions.

`status_error` and `translate_exception` are the only places that look at HTTP statuses and at
the HTTP client's (transfer/wire/) exceptions; every failure of a transfer leaves as a
`TransferError` subclass (core/errors.py). `redact_url` is the form of a URL those errors carry.
"""

from __future__ import annotations

import errno
import socket
import time
from urllib.parse import urlsplit, urlunsplit

from modelfetch.core.errors import (
    INVALID_CREDENTIALS,
    AuthRequiredError,
    ConnectFailedError,
    ForbiddenError,
    GatedError,
    HTTPStatusError,
    LocalFileError,
    NetworkError,
    NotFoundError,
    ProxyError,
    RateLimitedError,
    ServerBusyError,
    StalledError,
    TokenRefusedError,
    TransferError,
)
from modelfetch.core.headers import retry_after_seconds
from modelfetch.core.messages import is_file_error
from modelfetch.transfer.sink import DISK_FULL_ERRNOS, disk_full
from modelfetch.transfer.wire import (
    ConnectError,
    ConnectTimeoutError,
    IncompleteBodyError,
    InvalidURLError,
    NameResolutionError,
    ProtocolError,
    ProxyRefusedError,
    Response,
    ServerDisconnectedError,
    WireError,
)


def redact_url(url: str) -> str:
    """A URL fit for error messages and the store: no credentials, no signed query string."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def status_error(response: Response, *, url: str, redirected: bool) -> HTTPStatusError | ProxyError:
    """The one mapping from an unusable HTTP status to an error (most specific first)."""
    status = response.status
    headers = response.headers
    code = (headers.get("X-Error-Code") or "").strip() or None
    where = redact_url(url)
    detail = f"HTTP {status} {response.reason or ''}".rstrip() + f" from {where}"
    if code:
        detail += f" ({code})"

    def make(cls: type[HTTPStatusError], message: str) -> HTTPStatusError:
        return cls(message, status=status, url=where, error_code=code, redirected=redirected)

    if status == 407:  # only a proxy says this (for a plain-http request it forwarded)
        return ProxyError(
            f"the proxy refused the request to {where}: HTTP 407 {response.reason or ''}".rstrip()
            + "; it wants credentials: put them in the proxy URL",
            status=407,
            url=where,
        )
    if status in (404, 410):
        return make(NotFoundError, detail)
    if status == 401:
        if (headers.get("X-Error-Message") or "").strip() == INVALID_CREDENTIALS:
            return make(TokenRefusedError, detail + ": the token was refused (invalid or expired)")
        return make(AuthRequiredError, detail + ": a valid token is required")
    if status == 403:
        if code == "GatedRepo":
            return make(GatedError, detail + ": request access to the repo on the Hub first")
        if redirected:  # a CDN refusing a signed URL (expired?) is not about our token
            return make(ForbiddenError, detail)
        return make(AuthRequiredError, detail + ": the token does not grant access")
    if status in (429, 503):
        error = make(RateLimitedError if status == 429 else ServerBusyError, detail)
        error.retry_after = retry_after_seconds(headers, time.time())
        return error
    return make(HTTPStatusError, detail)


def translate_exception(
    exc: BaseException, *, url: str, stall: float | None
) -> TransferError | None:
    """The one mapping from foreign exceptions to our tree (most specific first). None means
    "not ours to translate": the caller re-raises it unchanged (a TransferError already, or
    something that is not an error of the network or the disk: a bug)."""
    where = redact_url(url)
    if isinstance(exc, TransferError):
        return None
    if isinstance(exc, NameResolutionError):
        name = f"proxy {exc.host}" if exc.proxy else urlsplit(url).hostname
        return NetworkError(f"cannot resolve {name}: {exc.os_error}", url=where)
    if isinstance(exc, ConnectError):
        what = "proxy " if exc.proxy else ""
        host = f"[{exc.host}]:{exc.port}" if ":" in exc.host else f"{exc.host}:{exc.port}"
        return ConnectFailedError(
            f"cannot connect to {what}{host}: {exc.os_error}",
            host=f"{what}{host}",
            refused=isinstance(exc.os_error, ConnectionRefusedError)
            or exc.os_error.errno == errno.ECONNREFUSED,
            url=where,
        )
    if isinstance(exc, ProxyRefusedError):
        if 500 <= exc.status <= 599:  # it could not reach the origin: like a network error
            return NetworkError(str(exc), url=where)
        hint = "; put the credentials in the proxy URL" if exc.status == 407 else ""
        return ProxyError(str(exc) + hint, status=exc.status, url=where)
    host = urlsplit(url).netloc
    if isinstance(exc, ServerDisconnectedError):
        return NetworkError(f"{host} closed the connection", url=where)
    if isinstance(exc, IncompleteBodyError):
        how = "reset" if exc.reset else "closed"
        return NetworkError(f"{host} {how} the connection before the whole body arrived", url=where)
    if isinstance(exc, ConnectTimeoutError):
        return NetworkError(f"timed out connecting: {exc}", url=where)
    if isinstance(exc, InvalidURLError):
        return NetworkError(f"invalid URL: {exc}", url=where)
    if isinstance(exc, ProtocolError):
        return NetworkError(f"{host} sent an invalid response: {exc}", url=where)
    if isinstance(exc, WireError):
        return NetworkError(f"{type(exc).__name__}: {exc}", url=where)
    if isinstance(exc, ConnectionResetError):
        return NetworkError(f"{host} reset the connection", url=where)
    if isinstance(exc, (ConnectionError, socket.gaierror)):
        return NetworkError(f"{host}: {exc.strerror or exc}", url=where)
    if isinstance(exc, TimeoutError):
        return StalledError(f"no data for {stall:g} s", url=where)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return disk_full(exc)
    if isinstance(exc, OSError) and is_file_error(exc):
        # The disk side refused (EACCES, EROFS, ENOTDIR, EIO...): the user's to fix, and the
        # retry policy knows which of these no retry can cure.
        return LocalFileError.from_os_error(exc)
    return None
