"""Every option in one place: the global options, the option types commands share, and the
configuration (`Overrides` → `Config`) built from them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelfetch import __version__
from modelfetch.cli.app_state import AppState as AppState
from modelfetch.cli.errors import EXIT_OK

if TYPE_CHECKING:
    pass


# ------------------------------------------------------------------------------ global options


def app_state(ctx: typer.Context) -> AppState:
    """The global options of this invocation (defaults when called without the root)."""
    obj = ctx.find_object(AppState)
    return obj if obj is not None else AppState()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelfetch {__version__}")
        raise typer.Exit(EXIT_OK)


HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (env MODELFETCH_HOME).", show_default=False),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
ProxyOpt = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        help="http proxy for every request to the outside, e.g. http://user:pw@proxy:3128 "
        '(env HTTPS_PROXY/HTTP_PROXY/ALL_PROXY; NO_PROXY still applies; "" turns it off).',
        show_default=False,
        metavar="URL",
    ),
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-bundle",
        help="PEM file of CAs to trust for https (env REQUESTS_CA_BUNDLE, SSL_CERT_FILE).",
        show_default=False,
        metavar="FILE",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="State database (env MODELFETCH_STORE): sqlite: (default, in the home) or "
        "postgresql://user@host/db, one queue shared by every worker on it.",
        show_default=False,
        metavar="URL",
    ),
]
VersionOpt = Annotated[
    bool,
    typer.Option("--version", help="Print the version.", is_eager=True, callback=_version),
]


def global_options(
    ctx: typer.Context,
    home: HomeOpt = None,
    debug: DebugOpt = False,
    proxy: ProxyOpt = None,
    ca_bundle: CaBundleOpt = None,
    store: StoreOpt = None,
    version: VersionOpt = False,
) -> None:
    """The root callback: keeps the global options for the command that runs."""
    ctx.obj = AppState(home=home, debug=debug, proxy=proxy, ca_bundle=ca_bundle, store=store)


# ------------------------------------------------------------------------------ shared options

SpecsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="What to download: owner/name, owner/name:Q4_K_M, owner/name/file.gguf, a URL.",
        show_default=False,
        metavar="SPEC",
    ),
]
InputOpt = Annotated[
    str | None,
    typer.Option(
        "--input-file",
        "-I",
        help="Also download what FILE lists: one spec or URL per line, # comments; - is stdin.",
        show_default=False,
        metavar="FILE",
    ),
]
QuantOpt = Annotated[
    str | None, typer.Option("--quant", "-q", help="Quantization, e.g. Q4_K_M.", show_default=False)
]
DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir", "-d", help="Models directory (default: <home>/models).", show_default=False
    ),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option("--layout", help="plain (owner/name/file) or hf-cache.", show_default=False),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", "-r", help="Branch, tag or commit.", show_default=False),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        "-i",
        help="Repo files by glob (repeatable): alone, only these; with a quant, these too.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (NDJSON/JSON).")]
IdsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Download ids (12) or file ids (12.3).", show_default=False),
]
AllOpt = Annotated[bool, typer.Option("--all", "-a", help="Every applicable download.")]

# The flags `hf download` users type (issue 16), for `get` and `add`.
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Leave out repo files matching GLOB (repeatable).",
        show_default=False,
        metavar="GLOB",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Hub token for this command only (sent only to the Hub, never stored).",
        show_default=False,
        metavar="TOKEN",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", help="Print only errors, and the downloaded paths at the end.")
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Show what would be downloaded (files, sizes, commit, destination)."
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="huggingface_hub cache to download into (implies --layout hf-cache; "
        "default: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub).",
        show_default=False,
        metavar="DIR",
    ),
]
LocalDirOpt = Annotated[
    Path | None,
    typer.Option("--local-dir", help="The same as --dir.", show_default=False, metavar="DIR"),
]
MaxWorkersOpt = Annotated[
    int | None,
    typer.Option("--max-workers", min=1, help="The same as --jobs.", show_default=False),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="No network at all: use what is on disk, fail for what is not (env HF_HUB_OFFLINE).",
    ),
]
DownloadRateOpt = Annotated[
    str | None,
    typer.Option(
        "--limit-rate",
        help="Bandwidth cap of each download added, in bytes/s, e.g. 20M.",
        show_default=False,
    ),
]


def parse_refs(ids: Sequence[str]) -> list[str]:
    """Download and file ids as typed (`12`, `12.3`), checked and normalized."""
    from modelfetch.core.models import ItemRef

    return [str(ItemRef.parse(i)) for i in ids]
