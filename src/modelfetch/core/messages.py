"""The words of an error: one line a person can act on, for every error the policy judges.

`describe` never includes a token or a signed URL's query string; `hub_page_url` finds the model
page behind a Hub URL (a resolve URL or an API URL), which gated and token errors name.
"""

from __future__ import annotations

import errno
import re
from urllib.parse import urlsplit, urlunsplit

from modelfetch.core.errors import (
    AuthRequiredError,
    ConnectFailedError,
    DiskFullError,
    ForbiddenError,
    GatedError,
    HTTPStatusError,
    IntegrityError,
    LocalFileError,
    ModelfetchError,
    NetworkError,
    NotFoundError,
    SchemeError,
    SpecError,
    StalledError,
    TokenRefusedError,
    TooManyRedirectsError,
    UnsafePathError,
)
from modelfetch.core.format import format_bytes, format_duration

__all__ = [
    "describe",
    "describe_file_error",
    "hub_page_url",
    "is_file_error",
    "never_answered",
]

_HUB_PATH = re.compile(
    r"^/(?P<kind>(?:datasets|spaces)/)?(?P<owner>[^/]+)/(?P<name>[^/]+)/resolve/"
)
# The API names the kind in the plural too: /api/models/o/n, /api/datasets/o/n, /api/spaces/o/n.
_API_PATH = re.compile(
    r"^/api/(?P<kind>models|datasets|spaces)/(?P<owner>[^/]+)/(?P<name>[^/?#]+)(?:/|$)"
)


def hub_page_url(url: str | None) -> str | None:
    """`https://hf.co/owner/name` for `https://hf.co/owner/name/resolve/...` or
    `https://hf.co/api/models/owner/name/...`, else None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    match = _HUB_PATH.match(parts.path)
    if match is not None:
        kind = match["kind"] or ""
    else:
        match = _API_PATH.match(parts.path)
        if match is None:
            return None
        kind = "" if match["kind"] == "models" else f"{match['kind']}/"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = f"/{kind}{match['owner']}/{match['name']}"
    return urlunsplit((parts.scheme, host, path, "", ""))


def _safe_url(url: str | None) -> str | None:
    """The URL without user info, query or fragment: signed CDN URLs carry secrets there."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _host(url: str | None) -> str | None:
    return urlsplit(url).hostname if url else None


def _with_detail(headline: str, error: ModelfetchError) -> str:
    """Append the error's own text when it adds something to the headline."""
    detail = error.message.strip()
    if not detail or detail.lower() in headline.lower():
        return headline
    return f"{headline} ({detail})"


def describe(error: BaseException) -> str:
    """One line a person can act on. Never includes a token or a signed URL's query string."""
    if isinstance(error, DiskFullError):
        return _describe_disk_full(error)
    if isinstance(error, LocalFileError):
        return describe_file_error(error.path, error.errno, error.cause)
    if isinstance(error, ConnectFailedError):
        return _with_detail(f"Cannot connect to {error.host}", error)
    if isinstance(error, HTTPStatusError):
        return _describe_http(error)
    if isinstance(error, StalledError):
        return _with_detail("The download stalled: no data arrived for too long", error)
    if isinstance(error, NetworkError):
        return _with_detail("Network error", error)
    if isinstance(error, TooManyRedirectsError):
        return _with_detail("Too many redirects", error) + _at(error.url)
    if isinstance(error, SchemeError):
        return _with_detail("Refused a URL whose scheme is not http or https", error)
    if isinstance(error, IntegrityError):
        headline = "The downloaded file is corrupt: it does not match the expected checksum or size"
        line = _with_detail(headline, error)
        if error.expected and error.actual:
            line += f"; expected {error.expected}, got {error.actual}"
        return line
    if isinstance(error, UnsafePathError):
        return _with_detail("Refused a destination outside the download folder", error)
    if isinstance(error, SpecError):
        return error.message
    if isinstance(error, TimeoutError):
        return f"Timed out{': ' + str(error) if str(error) else ''}"
    if isinstance(error, ModelfetchError):
        return error.message
    if isinstance(error, OSError) and is_file_error(error):
        # The OS refused a file operation: the user's disk or folder, not a bug of ours.
        return describe_file_error(error.filename, error.errno, error.strerror or str(error))
    text = str(error)
    what = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"Internal error ({what}); please report this bug"


def _at(url: str | None) -> str:
    safe = _safe_url(url)
    return f" at {safe}" if safe else ""


def _describe_disk_full(error: DiskFullError) -> str:
    if error.needed is not None and error.free is not None:
        space = f"needs {format_bytes(error.needed)}, {format_bytes(error.free)} free"
    elif error.needed is not None:
        space = f"needs {format_bytes(error.needed)}"
    elif error.free is not None:
        space = f"{format_bytes(error.free)} free"
    else:
        space = error.message
    return f"Disk full ({space}). Free some space, then resume."


def _describe_http(error: HTTPStatusError) -> str:
    status = error.status
    url = _safe_url(error.url)
    page = hub_page_url(error.url) or _page_named_in(error)
    host = _host(error.url)
    where = f" {url}" if url else ""
    if isinstance(error, GatedError):
        if page:
            return (
                f"{_repo_id(page)} is gated: accept its terms at {page} while signed in, "
                "then set HF_TOKEN to a token from that account."
            )
        return (
            "This repository is gated: accept its terms on its model page while signed in, "
            "then set HF_TOKEN to a token from that account."
        )
    if isinstance(error, TokenRefusedError):
        line = f"The token was refused (invalid or expired){' by ' + host if host else ''}"
        line += f": set HF_TOKEN to a valid token from {_tokens_page(error.url)}"
        if page:
            line += f" that can read {page}"
        return line
    if isinstance(error, AuthRequiredError) or (type(error) is HTTPStatusError and status == 401):
        what = _repo_id(page) if page else (url or "This file")
        line = (
            f"{what} needs a Hugging Face token (HTTP {status}): "
            "set HF_TOKEN to a token that can read it"
        )
        if page:
            line += f"; if it should be public, check the name at {page}"
        return line
    if status == 410:
        return _with_detail(f"Gone (HTTP 410):{where}", error) + "; it no longer exists"
    if isinstance(error, NotFoundError) or status == 404:
        return (
            _with_detail(f"Not found (HTTP {status}):{where}", error)
            + "; check the repository, file name and revision"
        )
    if isinstance(error, ForbiddenError) or status == 403:
        if error.redirected:
            return (
                _with_detail(f"Access denied by the download server (HTTP 403):{where}", error)
                + "; its signed link may have expired"
            )
        return _with_detail(f"Access denied (HTTP 403):{where}", error)
    if status in (429, 503):
        kind = "Rate limited" if status == 429 else "Server busy"
        line = _with_detail(f"{kind} (HTTP {status}){' by ' + host if host else ''}", error)
        if error.retry_after is not None:
            line += f"; asked to wait {format_duration(error.retry_after)}"
        return line
    return _with_detail(f"The server answered HTTP {status}{_at(error.url)}", error)


def _repo_id(page: str) -> str:
    """`owner/name` (or `datasets/owner/name`) from a Hub page URL."""
    return urlsplit(page).path.lstrip("/")


_URL_IN_TEXT = re.compile(r"https?://[^\s,;()]+[^\s,;().]")


def _page_named_in(error: HTTPStatusError) -> str | None:
    """The model page a gate or token error's own words name, when its URL is not known (a
    daemon's client rebuilds the error from the JSON answer: kind, message, status)."""
    if not isinstance(error, GatedError | AuthRequiredError):
        return None
    match = _URL_IN_TEXT.search(error.message)
    if match is None:
        return None
    page = match[0]
    if "/resolve/" in page or "/api/" in page:
        return hub_page_url(page)
    path = urlsplit(page).path.strip("/").split("/")
    return page if len(path) in (2, 3) and "settings" not in path else None


def _tokens_page(url: str | None) -> str:
    """The Hub's token settings page, on the origin that refused the token."""
    parts = urlsplit(url or "")
    if parts.scheme in ("http", "https") and parts.netloc:
        return urlunsplit((parts.scheme, parts.netloc, "/settings/tokens", "", ""))
    return "https://huggingface.co/settings/tokens"


# What to do about a file operation the OS refused, by errno. Never "try again": none of these
# goes away by itself.
_FILE_HINTS: dict[int, str] = {
    errno.EACCES: "this user may not write there: choose another folder (--dir) or fix its "
    "permissions",
    errno.EPERM: "this user may not write there: choose another folder (--dir) or fix its "
    "permissions",
    errno.EROFS: "that file system is mounted read-only: choose another folder (--dir)",
    errno.ENOTDIR: "a file is in the way where a folder should be: move it or choose another "
    "folder (--dir)",
    errno.EISDIR: "a folder is in the way where the file should be: move it",
    errno.EIO: "the disk reported an I/O error: check its health (dmesg, smartctl)",
    errno.ENAMETOOLONG: "the name is too long for that file system: choose a shorter folder",
}


def describe_file_error(path: object, code: int | None, cause: str) -> str:
    """`Cannot write /path: Permission denied; <what to do>` in one line."""
    where = f" {path}" if path is not None else ""
    line = f"Cannot write{where}: {cause or 'file system error'}"
    hint = _FILE_HINTS.get(code) if code is not None else None
    return f"{line}; {hint}" if hint else line


def never_answered(error: ConnectFailedError, attempts: int) -> str:
    """The last word on a host that refused every connection and never answered."""
    return (
        f"Cannot connect to {error.host}: the connection was refused {attempts} times and it "
        "never answered; check the address (HF_ENDPOINT, the URL) and that the server is running"
    )


def is_file_error(error: BaseException) -> bool:
    """A file operation the OS refused (a LocalFileError, or a raw OSError from the disk side):
    never a socket's error, which is the network's."""
    if isinstance(error, LocalFileError):
        return True
    return isinstance(error, OSError) and error.errno is not None and not _is_socket_error(error)


def _is_socket_error(error: OSError) -> bool:
    """A socket's OSError that escaped the HTTP client: not a file operation."""
    return isinstance(error, ConnectionError | TimeoutError) or error.errno in _SOCKET_ERRNOS


_SOCKET_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.EPIPE,
    }
)
