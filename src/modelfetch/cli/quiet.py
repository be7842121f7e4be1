"""`--quiet`: no progress, only errors, and at the end the path of each download, one a line,
as `hf download` prints the path it downloaded (a file, or the folder of several)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelfetch.core import events as ev
    from modelfetch.views import GroupView


class QuietDisplay:
    """A `render.Display` that shows nothing: errors are reported on their own."""

    def begin(self) -> None:
        pass

    def track(self, group_ids: Iterable[int] | None) -> None:
        pass

    def on_views(self, views: Sequence[GroupView]) -> None:
        pass

    def on_event(self, event: ev.Event) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def message(self, text: str, *, style: str | None = None) -> None:
        pass

    def end(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _snapshot_links(root: Path, blobs: set[Path]) -> list[Path]:
    """hf-cache: the snapshot paths that point at `blobs` (what huggingface_hub returns)."""
    found: list[Path] = []
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return found
    for path in sorted(snapshots.rglob("*")):
        if path.is_symlink() and path.resolve() in blobs:
            found.append(path)
    return found


def shown_path(view: GroupView) -> Path:
    """The one path a download is known by: its file, or the folder holding its files (for
    the hf-cache layout, the snapshot, not the blobs)."""
    root = Path(view.dest_dir)
    dests = [Path(f.dest) for f in view.files]
    if dests and all(d.parent == root / "blobs" for d in dests):
        links = _snapshot_links(root, {d.resolve() for d in dests})
        if links:
            if len(dests) == 1:
                return links[0]
            return root / "snapshots" / links[0].relative_to(root / "snapshots").parts[0]
    if len(dests) == 1:
        return dests[0]
    return root


def failure_lines(views: Iterable[GroupView]) -> list[str]:
    """One line per file that did not complete, for stderr: `name: file: why`."""
    lines: list[str] = []
    for v in views:
        for f in v.files:
            if f.status == "completed":
                continue
            why = f.error_message or f.status
            lines.append(f"{v.name}: {f.name}: {why}")
    return lines


def quiet_end(final: Sequence[GroupView], errors: Sequence[int]) -> int:
    """--quiet: the failures on stderr, the path of each download on stdout."""
    from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK

    for line in failure_lines(final):
        print(f"error: {line}", file=sys.stderr)
    for v in final:
        if v.status == "completed":
            print(shown_path(v))
    if all(v.status == "completed" for v in final) and not errors:
        return EXIT_OK
    return max(errors) if errors else EXIT_FAILED
