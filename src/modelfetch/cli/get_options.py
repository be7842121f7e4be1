"""What `get` and `add` were asked for, once the flags are settled (no typer here: the daemon
path of `get` builds one before typer is imported, see `cli/fast_get.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelfetch.cli.adding import Selection

__all__ = ["GetOptions"]


@dataclass
class GetOptions:
    specs: list[str]
    quant: str | None = None
    revision: str | None = None
    include: list[str] = field(default_factory=list)
    layout: str | None = None
    json: bool = False
    jobs: int | None = None
    limit_rate: str | None = None
    exclude: list[str] = field(default_factory=list)
    quiet: bool = False
    root: Path | None = None  # where a Hub model goes (None: the backend's models dir)
    urls_dir: Path | None = None  # where plain URLs go (None: the backend's models dir)
    token: str | None = field(default=None, repr=False)  # --token (this command only)

    def selection(self, layout: str) -> Selection:
        return Selection(
            quant=self.quant,
            revision=self.revision,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            layout=layout,
            root=self.root,
            urls_dir=self.urls_dir,
            token=self.token,
        )


def parse_rate_limit(text: str | None) -> int | None:
    """`--limit-rate` in bytes a second (None: not given); ConfigError for a value that is
    not a size. For `add` and `get`, in this process and through the daemon alike."""
    if text is None:
        return None
    from modelfetch.config import ConfigError
    from modelfetch.core.format import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"--limit-rate: {exc}") from None
