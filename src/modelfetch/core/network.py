"""How outgoing connections reach the world: the proxy rules and the CA bundle, decided once.

Every client that leaves the machine (transfers, the Hub API, probes) is built from one
`NetworkSettings`, so they cannot disagree about the proxy or about whom to trust. Loopback
clients of our own daemon do not use it: the daemon is never behind a proxy.

Precedence, highest first: a command-line flag, the config file, the environment.
CA bundle: `--ca-bundle`, config `ca_bundle`, `REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`, the
system store. (OpenSSL reads SSL_CERT_FILE by itself too; naming it here also covers the
Hub API client and makes `modelfetch config` able to show what is used.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelfetch.core.errors import ProxyConfigError
from modelfetch.core.proxy import NO_PROXIES, ProxyRules

__all__ = ["DIRECT", "NetworkSettings"]

_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    proxies: ProxyRules = NO_PROXIES
    ca_bundle: str | None = None  # a PEM file of trusted CAs; None: the system's store
    # Why these settings cannot be used (a proxy URL that does not parse), or None. Commands
    # that never leave the machine (`ls`, `status`, `pause`) still run; whatever would make a
    # connection outside asks `usable()` first and fails with this message, rather than going
    # out without the proxy the user set.
    error: str | None = None

    @classmethod
    def unusable(cls, error: str) -> NetworkSettings:
        return cls(error=error)

    def usable(self) -> NetworkSettings:
        """These settings; ProxyConfigError when they cannot be used."""
        if self.error is not None:
            raise ProxyConfigError(self.error)
        return self

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        proxy: str | None = None,
        ca_bundle: str | None = None,
    ) -> NetworkSettings:
        """Settings from an environment (passed in) and the overrides the caller resolved
        from flags and config (`proxy=""` turns proxies off; ProxyConfigError if unusable)."""
        bundle = ca_bundle.strip() if ca_bundle is not None and ca_bundle.strip() else None
        if bundle is None:
            bundle = next((env[n].strip() for n in _CA_VARIABLES if env.get(n, "").strip()), None)
        return cls(ProxyRules.from_env(env, proxy), bundle)

    def describe(self) -> list[tuple[str, str]]:
        """(setting, value) lines for `modelfetch config`: never a proxy password."""
        if self.error is not None:
            return [
                ("https proxy", f"unusable: {self.error}"),
                ("http proxy", "unusable"),
                ("ca bundle", self.ca_bundle or "system store"),
            ]
        rules = self.proxies
        lines = []
        for name, proxy in (("https proxy", rules.https), ("http proxy", rules.http)):
            shown = "none" if proxy is None or rules.bypass_all else proxy.url()
            if proxy is not None and proxy.username is not None:
                shown += " (with credentials)"
            lines.append((name, shown))
        lines.append(("ca bundle", self.ca_bundle or "system store"))
        return lines


DIRECT = NetworkSettings()
"""No proxy, the system's CAs: what tests and loopback-only tools use."""
