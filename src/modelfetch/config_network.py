"""The network part of the settings: the proxy and the CA bundle (a flag, else the config file,
else the environment) and the Hub endpoint's check. Split from `config.py`, which calls it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from modelfetch.config import ConfigError
from modelfetch.core.errors import ProxyConfigError
from modelfetch.core.network import NetworkSettings

if TYPE_CHECKING:
    from modelfetch.config import FileSettings, Overrides

__all__ = ["check_endpoint", "network_settings"]


_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy")


def network_settings(
    flags: Overrides,
    file: FileSettings,
    env: Mapping[str, str],
    from_file: str,
    sources: dict[str, str],
) -> NetworkSettings:
    """Proxy and CA bundle: a flag, else the config file, else the environment."""
    proxy: str | None = None
    if flags.proxy is not None:
        proxy, sources["proxy"] = flags.proxy, "--proxy"
    elif file.proxy is not None:
        proxy, sources["proxy"] = file.proxy, from_file
    else:
        named = [n for n in (*_PROXY_VARIABLES, "ALL_PROXY") if env.get(n, "").strip()]
        if named:
            sources["proxy"] = ", ".join(named)
    bundle: Path | None = None
    if flags.ca_bundle is not None:
        bundle, sources["ca_bundle"] = flags.ca_bundle, "--ca-bundle"
    elif file.ca_bundle is not None:
        bundle, sources["ca_bundle"] = file.ca_bundle, from_file
    else:
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            if env.get(name, "").strip():
                bundle, sources["ca_bundle"] = Path(env[name].strip()), name
                break
    if bundle is not None:
        bundle = bundle.expanduser().absolute()
        if not bundle.is_file():
            where = sources["ca_bundle"]
            raise ConfigError(f"{where}: the CA bundle {bundle} is not a readable file")
    try:
        return NetworkSettings.from_env(
            env, proxy=proxy, ca_bundle=str(bundle) if bundle is not None else None
        )
    except ProxyConfigError as exc:
        if proxy is not None:  # --proxy or config.toml: modelfetch's own setting, wrong now
            raise ConfigError(exc.message) from None
        # From the environment, which other tools share (a socks5 proxy for curl, say): kept,
        # not raised. A command that never leaves the machine still runs; one that would
        # connect out fails with this message (`NetworkSettings.usable`).
        return NetworkSettings.unusable(exc.message)


def check_endpoint(endpoint: str, where: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: the Hub endpoint must be an http(s) URL, not {endpoint!r}")
