"""One exception tree for everything modelfetch raises on purpose.

    ModelfetchError
    ├── SpecError                  a request the user wrote that we cannot parse or satisfy
    │   └── DestinationError       a destination folder that cannot be used (checked before queuing)
    ├── UnsafePathError            a destination that would escape its target directory
    ├── StateError                 the state directory or database cannot be used
    │   └── StateLockedError       another process owns the state directory
    ├── ProxyConfigError           a proxy URL (flag, config, *_PROXY) we cannot use
    ├── UnknownItemError           an id that names nothing in the queue
    ├── ConflictError              the item exists but is not in a state that allows this
    └── TransferError              one file could not be fetched; the retry policy decides what next
        ├── NetworkError           reset, refused, name resolution, protocol garbage
        │   ├── StalledError       no bytes for the stall timeout
        │   ├── ConnectFailedError no connection to a host: refused, unreachable, timed out
        │   └── HubProtocolError   the Hub API answered with something malformed
        ├── TooManyRedirectsError  a redirect loop or an over-long chain
        ├── SchemeError            a URL (or redirect) to a scheme we do not speak
        ├── ProxyError             the proxy refused us: 407 (credentials) or its own 4xx
        ├── IntegrityError         wrong SHA-256 / git blob id / size, or a lying server
        ├── DiskFullError          ENOSPC, or not enough free space to start
        ├── LocalFileError         the OS refused a file operation: EACCES, EROFS, ENOTDIR, EIO...
        └── HTTPStatusError        the server answered with a status we cannot use
            ├── NotFoundError      404 / 410
            ├── AuthRequiredError  401, or 403 from the Hub without a gate
            │   └── TokenRefusedError  401 "Invalid credentials": the token is invalid or expired
            ├── GatedError         403 with X-Error-Code: GatedRepo
            ├── ForbiddenError     403 from anywhere else (e.g. an expired signed CDN URL)
            ├── RateLimitedError   429 (retry_after seconds when the server said)
            └── ServerBusyError    503 (retry_after seconds when the server said)

Misuse of the API (calling methods in the wrong order) raises the builtin RuntimeError/ValueError,
outside the tree, so `except ModelfetchError` never hides a programming bug.

Every error has a stable `kind` string: it is what the store records and the API returns, so it
must never change for an existing class.
"""

from __future__ import annotations

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
"""The Hub's X-Error-Message (and JSON error) for a token it refuses: a TokenRefusedError."""


class ModelfetchError(Exception):
    """Root of every error modelfetch raises on purpose."""

    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SpecError(ModelfetchError):
    kind = "spec"


class DestinationError(SpecError):
    """A destination that cannot be written: `path` is the folder (or the file in its way),
    `cause` a few words ("not a directory", "read-only file system", ...)."""

    kind = "destination"

    def __init__(self, message: str, *, path: str | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.cause = cause


class UnsafePathError(ModelfetchError):
    kind = "unsafe_path"


class StateError(ModelfetchError):
    kind = "state"


class StateLockedError(StateError):
    kind = "state_locked"


class StoreUnavailableError(StateError):
    """The state database cannot be reached now: the connection broke (the server restarted,
    the network dropped) or a new one is refused. Nothing of the failed call was kept (and a
    batch open when it broke lost its writes); a later call reconnects, so a caller that can
    wait (a fleet worker) pauses its writes and tries again with backoff. `retry_after`: the
    seconds an API client is told to wait before asking again."""

    kind = "store_unavailable"
    retry_after = 5.0


class ProxyConfigError(ModelfetchError):
    kind = "proxy_config"


class UnknownItemError(ModelfetchError):
    kind = "unknown_item"


class ConflictError(ModelfetchError):
    kind = "conflict"


class TransferError(ModelfetchError):
    """A file could not be fetched. `url` is the URL of the hop that failed, when known."""

    kind = "transfer"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class NetworkError(TransferError):
    kind = "network"


class StalledError(NetworkError):
    kind = "stalled"


class ConnectFailedError(NetworkError):
    """No connection to `host` (`host:port`): `refused` when something answered the SYN with
    a reset (nothing listens there), False for unreachable, a timeout or a failed name lookup."""

    kind = "connect_failed"

    def __init__(
        self, message: str, *, host: str, refused: bool = False, url: str | None = None
    ) -> None:
        super().__init__(message, url=url)
        self.host = host
        self.refused = refused


class HubProtocolError(NetworkError):
    kind = "hub_protocol"


class TooManyRedirectsError(TransferError):
    kind = "too_many_redirects"


class SchemeError(TransferError):
    kind = "scheme"


class ProxyError(TransferError):
    """The proxy answered for itself (not for the origin) with a refusal: retrying as-is cannot
    help. A proxy that is down or answers 502/503/504 is a NetworkError instead (transient)."""

    kind = "proxy"

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.status = status


class IntegrityError(TransferError):
    kind = "integrity"

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.expected = expected
        self.actual = actual


class DiskFullError(TransferError):
    kind = "disk_full"

    def __init__(self, message: str, *, needed: int | None = None, free: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


class LocalFileError(TransferError):
    """The OS refused a file operation of a transfer (not a full disk: DiskFullError).
    `errno` is the OS error number, `path` the file or folder, `cause` the OS's words."""

    kind = "local_file"

    def __init__(
        self, message: str, *, path: str | None = None, errno: int | None = None, cause: str = ""
    ) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.cause = cause

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None) -> LocalFileError:
        """The error for `exc`; `path` when the OSError does not name its file itself."""
        where = exc.filename if exc.filename is not None else path
        shown = None if where is None else str(where)
        cause = exc.strerror or str(exc) or type(exc).__name__
        message = f"{shown}: {cause}" if shown else cause
        return cls(message, path=shown, errno=exc.errno, cause=cause)


class HTTPStatusError(TransferError):
    """A status the transfer cannot use. `redirected` is True when the failing hop was reached
    through a redirect (a CDN), False when it was the URL we were asked for (the Hub itself)."""

    kind = "http_status"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        url: str | None = None,
        error_code: str | None = None,
        redirected: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.error_code = error_code
        self.redirected = redirected
        self.retry_after = retry_after


class NotFoundError(HTTPStatusError):
    kind = "not_found"


class AuthRequiredError(HTTPStatusError):
    kind = "auth_required"


class TokenRefusedError(AuthRequiredError):
    """The Hub refused the token itself (401 "Invalid credentials in Authorization header"):
    told apart from no token at all, because the fix differs (a new token, not a first one)."""

    kind = "token_refused"


class GatedError(HTTPStatusError):
    kind = "gated"


class ForbiddenError(HTTPStatusError):
    kind = "forbidden"


class RateLimitedError(HTTPStatusError):
    kind = "rate_limited"


class ServerBusyError(HTTPStatusError):
    kind = "server_busy"


def _all_kinds() -> dict[str, type[ModelfetchError]]:
    found: dict[str, type[ModelfetchError]] = {}
    pending: list[type[ModelfetchError]] = [ModelfetchError]
    while pending:
        cls = pending.pop()
        found[cls.kind] = cls
        pending.extend(cls.__subclasses__())
    return found


ERROR_KINDS: dict[str, type[ModelfetchError]] = _all_kinds()
"""Every error kind, for validating stored rows and documenting the API."""
