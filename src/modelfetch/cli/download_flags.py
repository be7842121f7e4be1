"""The flags `get` and `add` share beyond the selection, settled into one `Config`: the
`hf download` aliases (`--local-dir` = `--dir`, `--max-workers` = `--jobs`), `--cache-dir`
(implies `--layout hf-cache`), `--token` and `--offline`; and where each kind of spec goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from modelfetch.cli.app_state import AppState
    from modelfetch.config import Config

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DownloadFlags:
    dir: Path | None = None
    local_dir: Path | None = None
    cache_dir: Path | None = None
    layout: str | None = None
    jobs: int | None = None
    max_workers: int | None = None
    token: str | None = None
    offline: bool = False


def _one_of(first: _T | None, second: _T | None, names: str) -> _T | None:
    """A flag and its alias: either, or both when they agree."""
    from modelfetch.config import ConfigError

    if first is not None and second is not None and first != second:
        raise ConfigError(f"{names} are the same option; give one value")
    return first if first is not None else second


def settle_flags(
    state: AppState, flags: DownloadFlags
) -> tuple[Config, str, Path | None, Path | None]:
    """(the config, the layout, where a Hub model goes, where a plain URL goes). The two
    places are None when the backend's own models directory applies (a daemon has its own);
    they are set whenever the user named a directory or the layout is hf-cache, whose root
    (huggingface_hub's cache) is the client's to say, and never the plain-URL directory."""
    from modelfetch.config import ConfigError

    models_dir = _one_of(flags.dir, flags.local_dir, "--dir and --local-dir")
    jobs = _one_of(flags.jobs, flags.max_workers, "--jobs and --max-workers")
    layout = flags.layout
    if flags.cache_dir is not None:
        if layout is not None and layout != "hf-cache":
            raise ConfigError(
                f"--cache-dir is the hf-cache layout's root; not with --layout {layout}"
            )
        layout = "hf-cache"
    if flags.token is not None and not flags.token.strip():
        raise ConfigError("--token is empty")
    cfg = state.config(
        models_dir=models_dir,
        max_active=jobs,
        layout=layout,
        cache_dir=flags.cache_dir,
        token=flags.token,
        offline=flags.offline or None,
    )
    chosen = cfg.layout
    named_dir = cfg.sources.get("models_dir") == "--dir"
    root = cfg.download_root(chosen) if chosen == "hf-cache" or named_dir else None
    urls_dir = cfg.models_dir if chosen == "hf-cache" or named_dir else None
    return cfg, chosen, root, urls_dir


def token_of(cfg: Config) -> str | None:
    """The --token value, if that is where the config's token came from."""
    if cfg.sources.get("hf_token") != "--token" or cfg.hf_token is None:
        return None
    return cfg.hf_token.get_secret_value()
