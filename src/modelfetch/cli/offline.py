"""Offline mode on the command line: each spec's files found on disk, printed; a one-line error
(exit status 2) for what is not there. Nothing is opened but the files: no state, no network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfetch.cli.consoles import stdout_console
from modelfetch.cli.errors import EXIT_OK, exit_code_for, report
from modelfetch.core.errors import ModelfetchError

if TYPE_CHECKING:
    from modelfetch.cli.get_options import GetOptions
    from modelfetch.config import Config


def serve_offline(cfg: Config, options: GetOptions, layout: str, *, debug: bool) -> int:
    """Offline: print the files of each spec found complete on disk; a one-line error (exit
    status 2) for each that is not. Nothing is opened but the files: no state, no network."""
    from modelfetch.offline import find_on_disk

    code = EXIT_OK
    out = stdout_console()
    for spec in options.specs:
        try:
            found = find_on_disk(
                spec,
                layout=layout,
                root=options.root or cfg.download_root(layout),
                urls_dir=options.urls_dir or cfg.models_dir,
                endpoint=cfg.hf_endpoint,
                quant=options.quant,
                revision=options.revision,
                include=options.include,
                exclude=options.exclude,
            )
        except ModelfetchError as exc:
            report(exc, debug, what=spec)
            code = max(code, exit_code_for(exc))
            continue
        if options.quiet:
            print(found.paths[0] if len(found.paths) == 1 else found.where)
            continue
        files = "1 file" if len(found.paths) == 1 else f"{len(found.paths)} files"
        out.print(f"✓ {found.name}: {files} on disk (offline)", highlight=False)
        for path in found.paths:
            print(path)
    return code
