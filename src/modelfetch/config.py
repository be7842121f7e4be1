"""The effective settings of one command: flags, then environment, then a TOML file, then defaults.

    flag            environment              config.toml     default
    --home          MODELFETCH_HOME          home            the platform's data dir for modelfetch
    --dir           MODELFETCH_MODELS_DIR    models_dir      <home>/models
    --jobs          MODELFETCH_MAX_ACTIVE    max_active      3
    --layout        MODELFETCH_LAYOUT        layout          plain
                    HF_ENDPOINT              hf_endpoint     https://huggingface.co
                    HF_TOKEN (and what       hf_token        none
                    huggingface_hub reads)
                                             stall_timeout   30 (seconds)
    --proxy         HTTPS_PROXY, HTTP_PROXY, proxy           none (NO_PROXY applies to every source)
                    ALL_PROXY (and lower case)
    --ca-bundle     REQUESTS_CA_BUNDLE,      ca_bundle       the system's CA store
                    SSL_CERT_FILE
    --cache-dir     HF_HUB_CACHE, HF_HOME,                   ~/.cache/huggingface/hub
                    XDG_CACHE_HOME (as huggingface_hub reads them): the hf-cache layout's root
    --store         MODELFETCH_STORE         store           sqlite: (a file in the home;
                                                             postgresql://...: a shared queue)
    --offline       HF_HUB_OFFLINE,                          off (no network request at all)
                    TRANSFORMERS_OFFLINE
    --token         (as HF_TOKEN above)                      the token for this command only

With `--layout hf-cache`, files go to `--cache-dir`, else `--dir`, else huggingface_hub's own
cache, so `hf_hub_download(..., local_files_only=True)` finds them (`Config.download_root`).

The file is `<home>/config.toml` when the home directory was given by `--home` or
`MODELFETCH_HOME`, else `$XDG_CONFIG_HOME/modelfetch/config.toml` (`~/.config/...`); only that
file may set `home`. `Config.sources` says where each value came from, for `modelfetch config`.
The token is never part of a repr or of `describe()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelfetch.config_mirror import MirrorFileSettings, mirror_settings
from modelfetch.core.errors import ModelfetchError, SpecError
from modelfetch.core.network import NetworkSettings

if TYPE_CHECKING:
    from modelfetch.hubconfig import HubConfig

__all__ = [
    "DEFAULT_MAX_ACTIVE",
    "Config",
    "ConfigError",
    "FileSettings",
    "Overrides",
    "SecretStr",
    "load_config",
    "mask_token",
    "user_config_path",
]

# Every command loads the settings, so this module stays cheap to import: no pydantic, and not
# the manager (it pulls in the transfer machinery) until a command asks for it.

DEFAULT_MAX_ACTIVE = 3
DEFAULT_STALL_TIMEOUT = 30.0
MAX_MAX_ACTIVE = 64
LayoutName = Literal["plain", "hf-cache"]
_LAYOUTS: tuple[str, ...] = ("plain", "hf-cache")

ENV_HOME = "MODELFETCH_HOME"
ENV_MODELS_DIR = "MODELFETCH_MODELS_DIR"
ENV_MAX_ACTIVE = "MODELFETCH_MAX_ACTIVE"
ENV_LAYOUT = "MODELFETCH_LAYOUT"


class ConfigError(ModelfetchError):
    """A setting that cannot be used: a malformed value in a flag, variable or config file."""

    kind = "config"


class SecretStr:
    """A token that never shows in a repr, a traceback's locals or `describe()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class FileSettings:
    """What `config.toml` may contain. Unknown keys are refused (a typo should not be silent)."""

    home: Path | None = None
    models_dir: Path | None = None
    max_active: int | None = None
    layout: LayoutName | None = None
    hf_endpoint: str | None = None
    hf_token: SecretStr | None = None
    stall_timeout: float | None = None
    proxy: str | None = None
    ca_bundle: Path | None = None
    store: str | None = None
    mirror: MirrorFileSettings | None = None  # the [mirror] table (config_mirror.py)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> FileSettings:
        """Check the values TOML gave; a ValueError names the first bad setting (`name: why`)."""
        known = cls.names()
        for name in raw:
            if name not in known:
                raise ValueError(f"{name}: unknown setting")
        values: dict[str, Any] = {}
        for name in ("home", "models_dir", "ca_bundle"):
            if name in raw:
                values[name] = Path(_string(raw, name))
        if "max_active" in raw:
            value = raw["max_active"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("max_active: must be a whole number")
            if not 1 <= value <= MAX_MAX_ACTIVE:
                raise ValueError(f"max_active: must be from 1 to {MAX_MAX_ACTIVE}, not {value}")
            values["max_active"] = value
        if "layout" in raw:
            values["layout"] = _check_layout(_string(raw, "layout"), "layout")
        if "hf_endpoint" in raw:
            values["hf_endpoint"] = _string(raw, "hf_endpoint")
        if "hf_token" in raw:
            values["hf_token"] = SecretStr(_string(raw, "hf_token"))
        for name in ("proxy", "store"):
            if name in raw:
                values[name] = _string(raw, name)
        if "mirror" in raw:
            values["mirror"] = mirror_settings(raw["mirror"])
        if "stall_timeout" in raw:
            value = raw["stall_timeout"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("stall_timeout: must be a number of seconds")
            if not value > 0:
                raise ValueError(f"stall_timeout: must be more than 0, not {value}")
            values["stall_timeout"] = float(value)
        return cls(**values)


def _string(raw: Mapping[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string")
    return value


@dataclass(frozen=True, slots=True)
class Overrides:
    """Values given as flags on the command line (None: not given)."""

    home: Path | None = None
    models_dir: Path | None = None
    max_active: int | None = None
    layout: str | None = None
    proxy: str | None = None  # "" turns proxies off
    ca_bundle: Path | None = None
    cache_dir: Path | None = None  # the hf-cache root (--cache-dir)
    token: str | None = None  # --token: this command only, never written anywhere
    offline: bool | None = None  # --offline (None: HF_HUB_OFFLINE decides)
    store: str | None = None  # --store URL


@dataclass(frozen=True, kw_only=True)
class Config:
    """The effective settings. `manager_kwargs()` is what `open_backend` / DownloadManager take."""

    home: Path
    models_dir: Path
    max_active: int
    layout: LayoutName
    hf_endpoint: str
    hf_token: SecretStr | None = None
    stall_timeout: float
    network: NetworkSettings = field(default_factory=NetworkSettings)
    hf_cache_dir: Path = field(
        default_factory=lambda: Path("~/.cache/huggingface/hub").expanduser()
    )
    hf_cache_from: str = "default"  # what set hf_cache_dir: --cache-dir or a variable
    offline: bool = False
    store_url: str | None = None  # None: SQLite in `home` (config_store.py)
    mirror: MirrorFileSettings = field(default_factory=MirrorFileSettings)
    config_file: Path
    config_file_found: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_active < 1:
            raise ConfigError(f"max_active must be at least 1, not {self.max_active}")
        if not self.stall_timeout > 0:
            raise ConfigError(f"stall_timeout must be more than 0, not {self.stall_timeout}")
        _check_layout(self.layout, "layout")

    def hub_config(self) -> HubConfig:
        """Where the Hub is and the token to show it."""
        from modelfetch.hubconfig import HubConfig

        token = self.hf_token.get_secret_value() if self.hf_token is not None else None
        return HubConfig(self.hf_endpoint, token)

    def download_root(self, layout: str) -> Path:
        """Where a Hub model's files go for `layout`: the models directory for `plain`; for
        `hf-cache`, `--cache-dir`, else `--dir`, else huggingface_hub's cache (HF_HUB_CACHE ...).
        MODELFETCH_MODELS_DIR and the config file's models_dir name the plain layout's home,
        so they do not move an hf-cache download out of the cache huggingface_hub reads."""
        if layout != "hf-cache":
            return self.models_dir
        if self.hf_cache_from != "--cache-dir" and (self.sources.get("models_dir") == "--dir"):
            return self.models_dir
        return self.hf_cache_dir

    def manager_kwargs(self, **extra: Any) -> dict[str, Any]:
        """`home`, `settings`, `hub` and `models_dir` for DownloadManager / open_backend."""
        from modelfetch.manager import ManagerSettings

        settings = ManagerSettings(
            max_active=self.max_active, stall_timeout=self.stall_timeout, network=self.network
        )
        return {
            "home": self.home,
            "settings": settings,
            "hub": self.hub_config(),
            "models_dir": self.models_dir,
            "store_url": self.store_url,
            **extra,
        }

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value as shown, where it came from) for every setting; the token masked."""
        token = self.hf_token.get_secret_value() if self.hf_token is not None else None
        rows = [
            ("home", str(self.home)),
            ("models_dir", str(self.models_dir)),
            ("max_active", str(self.max_active)),
            ("layout", self.layout),
            ("hf_endpoint", self.hf_endpoint),
            ("hf_token", mask_token(token)),
            ("stall_timeout", f"{self.stall_timeout:g} s"),
        ]
        network = dict(self.network.describe())
        rows.append(("proxy", f"https: {network['https proxy']}, http: {network['http proxy']}"))
        rows.append(("ca_bundle", network["ca bundle"]))
        rows.append(("offline", "yes" if self.offline else "no"))
        from modelfetch.config_store import shown_store

        rows.append(("store", shown_store(self.store_url, str(self.home))))
        shown = [(name, value, self.sources.get(name, "default")) for name, value in rows]
        from_file = self.mirror != MirrorFileSettings()
        where = self.sources.get("mirror", "config.toml" if from_file else "default")
        shown.append(("mirror", _describe_mirror(self.mirror), where))
        # Where `--layout hf-cache` writes, and so where huggingface_hub will look for it.
        cache_root = self.download_root("hf-cache")
        from_dir = cache_root != self.hf_cache_dir
        cache_source = "--dir" if from_dir else self.hf_cache_from
        shown.append(("hf_cache_dir", str(cache_root), cache_source))
        return shown


def _describe_mirror(mirror: MirrorFileSettings) -> str:
    """`serve`'s mirror as `[mirror]` of config.toml sets it (flags of `serve` come on top)."""
    from modelfetch.core.format import format_bytes

    if not mirror.enabled and mirror.host is None:
        return "off (serve --mirror turns it on)"
    opened = f", read-only on {mirror.host}:{mirror.port or 8766}" if mirror.host else ""
    cap = f", cache max {format_bytes(mirror.cache_max)}" if mirror.cache_max else ""
    return f"on with serve{opened}{cap}"


def mask_token(token: str | None) -> str:
    """`hf_…wxyz` for a long token, `***` for a short one, `(none)` without one."""
    if not token:
        return "(none)"
    if len(token) < 12:
        return "***"
    prefix = "hf_" if token.startswith("hf_") else ""
    return f"{prefix}…{token[-4:]}"


def user_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "modelfetch" / "config.toml"


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("modelfetch"))


def _read_file(path: Path) -> FileSettings | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    import tomllib  # only with a file to read: every command reads the config first

    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return FileSettings.from_mapping(raw)
    except ValueError as exc:
        known = ", ".join(FileSettings.names())
        raise ConfigError(f"{path}: {exc} (settings: {known})") from None


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, not {value}")
    return value


def _check_layout(value: str, where: str) -> LayoutName:
    if value not in _LAYOUTS:
        raise ConfigError(f"{where}: unknown layout {value!r} (use plain or hf-cache)")
    return "plain" if value == "plain" else "hf-cache"


def _token_source(environ: Mapping[str, str]) -> str:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if environ.get(name, "").strip():
            return name
    if environ.get("HF_TOKEN_PATH"):
        return f"HF_TOKEN_PATH ({environ['HF_TOKEN_PATH']})"
    if environ.get("HF_HOME"):
        return f"$HF_HOME/token ({environ['HF_HOME']}/token)"
    return "huggingface_hub's token file"


def load_config(
    overrides: Overrides | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Combine flags, environment, the config file and defaults. ConfigError if any is unusable."""
    flags = overrides or Overrides()
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}

    home: Path | None = None
    if flags.home is not None:
        home, sources["home"] = flags.home, "--home"
    elif env.get(ENV_HOME, "").strip():
        home, sources["home"] = Path(env[ENV_HOME].strip()), ENV_HOME
    config_file = (home.expanduser() / "config.toml") if home is not None else user_config_path(env)
    file = _read_file(config_file)
    found = file is not None
    file = file or FileSettings()
    from_file = str(config_file)
    if home is None:
        if file.home is not None:
            home, sources["home"] = file.home, from_file
        else:
            home = _default_home()
    home = home.expanduser().absolute()

    models_dir: Path
    if flags.models_dir is not None:
        models_dir, sources["models_dir"] = flags.models_dir, "--dir"
    elif env.get(ENV_MODELS_DIR, "").strip():
        models_dir, sources["models_dir"] = Path(env[ENV_MODELS_DIR].strip()), ENV_MODELS_DIR
    elif file.models_dir is not None:
        models_dir, sources["models_dir"] = file.models_dir, from_file
    else:
        models_dir = home / "models"
    models_dir = models_dir.expanduser().absolute()

    max_active = DEFAULT_MAX_ACTIVE
    env_max = _env_int(env, ENV_MAX_ACTIVE)
    if flags.max_active is not None:
        if flags.max_active < 1:
            raise ConfigError(f"--jobs must be at least 1, not {flags.max_active}")
        max_active, sources["max_active"] = flags.max_active, "--jobs"
    elif env_max is not None:
        max_active, sources["max_active"] = env_max, ENV_MAX_ACTIVE
    elif file.max_active is not None:
        max_active, sources["max_active"] = file.max_active, from_file

    layout: LayoutName = "plain"
    if flags.layout is not None:
        layout, sources["layout"] = _check_layout(flags.layout, "--layout"), "--layout"
    elif env.get(ENV_LAYOUT, "").strip():
        layout = _check_layout(env[ENV_LAYOUT].strip(), ENV_LAYOUT)
        sources["layout"] = ENV_LAYOUT
    elif file.layout is not None:
        layout, sources["layout"] = file.layout, from_file

    # The Hub settings read exactly as huggingface_hub reads them (HF_ENDPOINT, HF_TOKEN, its
    # legacy name, and its token file); the config file fills in only what they leave unset.
    from modelfetch.core.spec import DEFAULT_ENDPOINT
    from modelfetch.hubconfig import hub_config_from_env

    try:
        hub = hub_config_from_env(env)
    except SpecError as exc:
        raise ConfigError(exc.message) from None
    endpoint = hub.endpoint
    if env.get("HF_ENDPOINT", "").strip():
        sources["hf_endpoint"] = "HF_ENDPOINT"
    elif file.hf_endpoint is not None:
        endpoint, sources["hf_endpoint"] = file.hf_endpoint.strip().rstrip("/"), from_file
    else:
        endpoint = DEFAULT_ENDPOINT
    from modelfetch.config_network import check_endpoint, network_settings

    check_endpoint(endpoint, sources.get("hf_endpoint", "default"))

    token: SecretStr | None = None
    if flags.token is not None and flags.token.strip():
        token, sources["hf_token"] = SecretStr(flags.token.strip()), "--token"
    elif hub.token is not None:
        token, sources["hf_token"] = SecretStr(hub.token), _token_source(env)
    elif file.hf_token is not None and file.hf_token.get_secret_value().strip():
        token = SecretStr(file.hf_token.get_secret_value().strip())
        sources["hf_token"] = from_file

    stall_timeout = DEFAULT_STALL_TIMEOUT
    if file.stall_timeout is not None:
        stall_timeout, sources["stall_timeout"] = file.stall_timeout, from_file

    network = network_settings(flags, file, env, from_file, sources)

    # Kept out of `sources`: even XDG_CACHE_HOME, a variable every session may have, decides it.
    if flags.cache_dir is not None:
        hf_cache_dir, hf_cache_from = flags.cache_dir.expanduser().absolute(), "--cache-dir"
    else:
        from modelfetch.hubconfig import hf_hub_cache

        hf_cache_dir, hf_cache_from = hf_hub_cache(env)
    offline = False
    if flags.offline:
        offline, sources["offline"] = True, "--offline"
    else:
        from modelfetch.hubconfig import hf_hub_offline

        offline_source = hf_hub_offline(env)
        if offline_source is not None:
            offline, sources["offline"] = True, offline_source

    from modelfetch.config_store import choose_store

    try:
        store_url = choose_store(flags.store, env, file.store, from_file, sources)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    return Config(
        home=home,
        models_dir=models_dir,
        max_active=max_active,
        layout=layout,
        hf_endpoint=endpoint,
        hf_token=token,
        stall_timeout=stall_timeout,
        network=network,
        hf_cache_dir=hf_cache_dir,
        hf_cache_from=hf_cache_from,
        offline=offline,
        store_url=store_url,
        mirror=file.mirror or MirrorFileSettings(),
        config_file=config_file,
        config_file_found=found,
        sources=sources,
    )
