"""Where a request goes: a URL parsed into a target, and the request head sent to it."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from modelfetch.transfer.wire.errors import InvalidURLError

__all__ = ["DEFAULT_PORTS", "TOKEN", "Target", "request_head"]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")  # and anything not ASCII
_UNSAFE_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's request goes and what its request line and Host field say."""

    scheme: str
    host: str  # for connecting: a name (IDNA-encoded) or an IP literal without brackets
    port: int
    host_header: str  # what the Host field says: brackets for IPv6, the port when not default
    path: str  # path and query, percent-encoded, as sent on the request line
    authorization: str | None = None  # Basic credentials from the URL's userinfo

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @classmethod
    def of(cls, url: str) -> Target:
        """Parse `url`. An ASCII URL without spaces is taken as already encoded and sent byte
        for byte (re-quoting could break a CDN's signed query); anything else is encoded the
        way yarl encodes it (imported only then): non-ASCII and spaces in the path and query
        percent-encoded, valid %XX sequences kept, a non-ASCII host IDNA-encoded."""
        if url.isascii() and " " not in url:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                raise InvalidURLError(f"{url!r}: {exc}") from None
            scheme = parts.scheme.lower()
            host = parts.hostname or ""
            path = parts.path or "/"
            if parts.query:
                path = f"{path}?{parts.query}"
            user, password = parts.username, parts.password
        else:
            from yarl import URL  # only for URLs that need encoding: it costs ~10 ms to import

            try:
                parsed = URL(url)
                port = parsed.explicit_port
                host = parsed.raw_host or ""
            except (ValueError, UnicodeError) as exc:
                raise InvalidURLError(f"{url!r}: {exc}") from None
            scheme = parsed.scheme.lower()
            path = parsed.raw_path_qs or "/"
            user, password = parsed.raw_user, parsed.raw_password
        if scheme not in DEFAULT_PORTS:
            raise InvalidURLError(f"{url!r}: not an http or https URL")
        if not host:
            raise InvalidURLError(f"{url!r}: no host")
        host = host.lower()
        default = DEFAULT_PORTS[scheme]
        port = default if port is None else port
        if not 0 < port < 65536:
            raise InvalidURLError(f"{url!r}: port {port} out of range")
        if not (path + host).isascii() or _UNSAFE_TARGET.search(path + host):
            raise InvalidURLError(f"{url!r}: characters that cannot be sent")
        shown = f"[{host.partition('%')[0]}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        authorization = None
        if user is not None:
            pair = f"{unquote(user)}:{unquote(password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(scheme, host, port, host_header, path, authorization)

    @property
    def authority(self) -> str:
        """`host:port` as a CONNECT request names it (brackets for IPv6, the port always)."""
        shown = f"[{self.host.partition('%')[0]}]" if ":" in self.host else self.host
        return f"{shown}:{self.port}"

    @property
    def absolute(self) -> str:
        """The absolute-form request target, for a request sent to an http proxy."""
        return f"{self.scheme}://{self.host_header}{self.path}"


def request_head(
    method: str,
    target: Target,
    defaults: Mapping[str, str],
    extra: Mapping[str, str],
    *,
    via_proxy: bool = False,
    proxy_authorization: str | None = None,
) -> bytes:
    """The request line and fields. `via_proxy`: the request goes to an http proxy, so the
    target is in absolute form, with the proxy's credentials (if any) in Proxy-Authorization."""
    fields: dict[str, tuple[str, str]] = {"host": ("Host", target.host_header)}
    if target.authorization is not None:
        fields["authorization"] = ("Authorization", target.authorization)
    for source in (defaults, extra):
        for name, value in source.items():
            if not TOKEN.fullmatch(name.encode("latin-1", "replace")) or _UNSAFE_HEADER.search(
                value
            ):
                raise ValueError(f"a header that cannot be sent: {name!r}")
            if name.lower().startswith("proxy-"):
                continue  # only the session decides what a proxy is told
            fields[name.lower()] = (name, value)
    on_line = target.path
    if via_proxy:
        on_line = target.absolute
        if proxy_authorization is not None:
            fields["proxy-authorization"] = ("Proxy-Authorization", proxy_authorization)
    lines = [f"{method} {on_line} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.values()]
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a header value outside Latin-1") from None
