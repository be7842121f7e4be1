"""Which proxy a URL goes through: *_PROXY / NO_PROXY rules, parsed once, asked per request.

The rules are the ones curl, requests and huggingface_hub agree on, so a lab's environment
means the same thing to modelfetch as to `hf download`:
- `https_proxy` > `HTTPS_PROXY` > `all_proxy` > `ALL_PROXY` for https URLs, and `http_proxy` >
  `HTTP_PROXY` > `all_proxy` > `ALL_PROXY` for http ones (upper-case `HTTP_PROXY` is honoured,
  as curl does outside CGI); an empty value counts as unset;
- `no_proxy` > `NO_PROXY`: comma- or space-separated; `*` bypasses everything; `example.com`
  and `.example.com` both match that host and every subdomain; an IP literal or a CIDR block
  (v4 or v6) matches addresses; an entry may end in `:port` to match only that port;
- a proxy URL without a scheme is an http proxy; https and socks proxies are refused with a
  clear error rather than silently used as something else.
An explicit override (`--proxy`, the config file) replaces the *_PROXY variables for both
schemes; NO_PROXY still applies to it (`--proxy ""` is not a way to bypass: it turns proxies off).

Pure: the environment is passed in, nothing is read here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from modelfetch.core.errors import ProxyConfigError

if TYPE_CHECKING:  # ipaddress costs ~3 ms to import: only NO_PROXY entries need it
    import ipaddress

__all__ = ["NO_PROXIES", "Proxy", "ProxyRules", "parse_proxy"]

_ORDER = {
    "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
}


@dataclass(frozen=True, slots=True)
class Proxy:
    """An http proxy: where to connect, and the Basic credentials its URL carried (if any)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def authorization(self) -> str | None:
        """The Proxy-Authorization value, or None without credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def url(self, *, credentials: bool = False) -> str:
        """`http://host:port`; with `credentials`, the user info too (for a client library
        that takes a proxy URL). Shown to people only without them."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = ""
        if credentials and self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        return f"http://{userinfo}{shown}:{self.port}"

    def __repr__(self) -> str:  # never the password, whatever prints us
        return f"Proxy({self.url()!r}{', with credentials' if self.username else ''})"


def parse_proxy(text: str, *, source: str = "proxy") -> Proxy:
    """A proxy URL as people write it (`host:3128`, `http://user:pw@host:3128`)."""
    raw = text.strip()
    shown = _redacted(raw)
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ProxyConfigError(f"{source}: cannot parse proxy URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        hint = " (use an http:// proxy; https is tunnelled through it with CONNECT)"
        raise ProxyConfigError(f"{source}: {scheme} proxies are not supported{hint}: {shown!r}")
    if not parts.hostname:
        raise ProxyConfigError(f"{source}: proxy URL {shown!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(f"{source}: a proxy URL is scheme://host:port, not {shown!r}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy(parts.hostname.lower(), port or 80, username, password)


def _redacted(text: str) -> str:
    """The proxy URL with any password replaced: it goes into error messages."""
    scheme, sep, rest = text.rpartition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return text
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hostport}"


@dataclass(frozen=True, slots=True)
class _Bypass:
    """One NO_PROXY entry."""

    host: str | None = None  # a name suffix (matches itself and subdomains)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            import ipaddress

            try:
                address = ipaddress.ip_address(host.partition("%")[0])
            except ValueError:
                return False
            return address.version == self.network.version and address in self.network
        assert self.host is not None
        return host == self.host or host.endswith("." + self.host)


def _parse_bypass(entry: str) -> _Bypass | None:
    entry = entry.strip().lower()
    if not entry:
        return None
    port: int | None = None
    if entry.startswith("["):  # [v6]:port or [v6]
        inside, _, after = entry[1:].partition("]")
        entry = inside
        if after.startswith(":") and after[1:].isdigit():
            port = int(after[1:])
    elif entry.count(":") == 1:  # host:port or v4:port (a bare v6 has several colons)
        name, _, maybe_port = entry.partition(":")
        if maybe_port.isdigit():
            entry, port = name, int(maybe_port)
    import ipaddress

    try:
        return _Bypass(network=ipaddress.ip_network(entry, strict=False), port=port)
    except ValueError:
        pass
    name = entry.lstrip("*").lstrip(".")
    return _Bypass(host=name, port=port) if name else None


@dataclass(frozen=True, slots=True)
class ProxyRules:
    """The proxy (or none) for each scheme, and the hosts that bypass it."""

    http: Proxy | None = None
    https: Proxy | None = None
    bypass: tuple[_Bypass, ...] = ()
    bypass_all: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], override: str | None = None) -> ProxyRules:
        """Rules from an environment (os.environ, passed in) and an optional override URL
        (`--proxy`, config); an empty override means "no proxy at all"."""
        if override is not None:
            proxy = parse_proxy(override, source="--proxy") if override.strip() else None
            http = https = proxy
        else:
            http = _first(env, "http")
            https = _first(env, "https")
        no_proxy = next((env[n] for n in ("no_proxy", "NO_PROXY") if env.get(n, "").strip()), "")
        entries = no_proxy.replace(" ", ",").split(",")
        bypass_all = any(e.strip() == "*" for e in entries)
        parsed = tuple(b for e in entries if e.strip() != "*" and (b := _parse_bypass(e)))
        return cls(http, https, parsed, bypass_all)

    @property
    def active(self) -> bool:
        return (self.http is not None or self.https is not None) and not self.bypass_all

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy a request to `url` goes through, or None to connect directly."""
        if not self.active:
            return None
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None  # the caller's URL check reports it
        scheme = parts.scheme.lower()
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None:
            return None
        host = (parts.hostname or "").lower()
        port = port or (443 if scheme == "https" else 80)
        if any(b.matches(host, port) for b in self.bypass):
            return None
        return proxy


NO_PROXIES = ProxyRules()
"""Connect directly, whatever the environment says."""


def _first(env: Mapping[str, str], scheme: str) -> Proxy | None:
    for name in _ORDER[scheme]:
        value = env.get(name, "").strip()
        if value:
            return parse_proxy(value, source=name)
    return None
