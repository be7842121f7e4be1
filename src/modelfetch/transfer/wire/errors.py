"""The typed failures of the wire client; transfer/failures.py turns them into transfer errors."""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "ConnectTimeoutError",
    "IncompleteBodyError",
    "InvalidURLError",
    "NameResolutionError",
    "ProtocolError",
    "ProxyRefusedError",
    "ServerDisconnectedError",
    "StallError",
    "WireError",
]


class WireError(Exception):
    """Every failure of this client that is not a local programming error."""


class InvalidURLError(WireError, ValueError):
    """A URL this client cannot send (no host, a bad port, an unsupported scheme...)."""


class ConnectError(WireError):
    """No connection to `host:port`: refused, unreachable, or a TLS handshake that failed
    (including certificate verification); `os_error` is what the OS or ssl module said."""

    def __init__(self, host: str, port: int, os_error: OSError, *, proxy: bool = False) -> None:
        what = "proxy " if proxy else ""
        super().__init__(f"cannot connect to {what}{host}:{port}: {os_error}")
        self.host = host
        self.port = port
        self.os_error = os_error
        self.proxy = proxy


class NameResolutionError(ConnectError):
    """The host name did not resolve."""


class ConnectTimeoutError(WireError):
    """Connecting (TCP and TLS) took longer than the connect timeout."""


class ServerDisconnectedError(WireError):
    """The server closed the connection before a complete response head."""


class IncompleteBodyError(WireError):
    """The connection ended before the body did (its length, or its last chunk)."""

    def __init__(self, message: str, *, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


class ProtocolError(WireError):
    """The server sent something that is not HTTP/1.1 as we accept it."""


class StallError(WireError):
    """`Response.stream`: no body bytes for the stall timeout."""


class ProxyRefusedError(WireError):
    """The proxy answered a CONNECT with something other than 2xx: `status` is its answer
    (407: it wants credentials, or other ones). Never carries the credentials themselves."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
