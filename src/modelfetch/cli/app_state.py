"""The global options of one invocation (no typer here: `cli/fast_get.py` builds one too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelfetch.config import Config

__all__ = ["AppState"]


@dataclass
class AppState:
    """The global options, as the root callback read them."""

    home: Path | None = None
    debug: bool = False
    proxy: str | None = None
    ca_bundle: Path | None = None
    store: str | None = None

    def config(
        self,
        *,
        models_dir: Path | None = None,
        max_active: int | None = None,
        layout: str | None = None,
        cache_dir: Path | None = None,
        token: str | None = None,
        offline: bool | None = None,
    ) -> Config:
        """The configuration with this invocation's global options and a command's own."""
        from modelfetch.config import Overrides, load_config

        return load_config(
            Overrides(
                home=self.home,
                models_dir=models_dir,
                max_active=max_active,
                layout=layout,
                proxy=self.proxy,
                ca_bundle=self.ca_bundle,
                store=self.store,
                cache_dir=cache_dir,
                token=token,
                offline=offline,
            )
        )
