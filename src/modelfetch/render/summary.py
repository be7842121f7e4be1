"""The summary `get` and `run` print at the end: a line per download, and why it did not finish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelfetch.core.format import format_bytes
from modelfetch.render.collapse import MANY_GROUPS
from modelfetch.render.words import file_state, group_state
from modelfetch.views import GroupView

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from modelfetch.render.plaintext import PlainConsole


def print_summary(views: Sequence[GroupView], console: Console | PlainConsole, now: float) -> bool:
    """Print what happened to each group; True if all completed. Above MANY_GROUPS, the
    completed ones share one line and only the others get one each. A PlainConsole prints the
    same lines without rich (for a pipe)."""
    Text = _text_type(console)
    ok = True
    if len(views) > MANY_GROUPS:
        completed = [v for v in views if v.status == "completed"]
        views = [v for v in views if v.status != "completed"]
        if completed:
            console.print(completed_line(completed, text=Text))
    for v in views:
        files = "1 file" if len(v.files) == 1 else f"{len(v.files)} files"
        if v.status == "completed":
            line = Text("✓ ", style="green")
            line.append(f"{v.name}", style="bold")
            # Hub files are checked against the digests the Hub lists; a plain URL has none.
            checked = "verified" if v.spec.startswith("hf://") else "(no digest to check against)"
            line.append(f": {files}, {format_bytes(v.total)}, {checked} → {v.dest_dir}")
            console.print(line)
            continue
        ok = False
        state = group_state(v, now) or v.status
        line = Text("✗ ", style="red")
        line.append(f"{v.name}", style="bold")
        line.append(f": {state}")
        console.print(line)
        for f in v.files:
            if f.status == "completed":
                continue
            why = f.error_message or file_state(f, now) or f.status
            if f.status == "paused" and f.pause_reason != "disk_full":
                why = "paused"
            elif f.status == "waiting_retry":
                why = file_state(f, now) or why
            console.print(f"    {f.ref} {f.name}: {why}", soft_wrap=True, highlight=False)
    return ok


def _text_type(console: object) -> Any:
    from modelfetch.render.plaintext import PlainConsole, PlainText

    if isinstance(console, PlainConsole):
        return PlainText
    from rich.text import Text

    return Text


def completed_line(views: Sequence[GroupView], *, text: Any = None) -> Text:
    """`✓ 200 downloads: 200 files, 12.5 MiB, 3 verified → /models/example.org` (a rich Text,
    or of the type `text` names)."""
    if text is None:
        from rich.text import Text as text

    files = sum(len(v.files) for v in views)
    size = sum(v.total or 0 for v in views)
    verified = sum(1 for v in views if v.spec.startswith("hf://"))
    dirs = sorted({v.dest_dir for v in views})
    where = dirs[0] if len(dirs) == 1 else f"{len(dirs)} directories"
    checked = f"{verified} verified" if verified else "no digests to check against"
    line = text("✓ ", style="green")
    line.append(f"{len(views)} downloads", style="bold")
    line.append(f": {files} files, {format_bytes(size)}, {checked} → {where}")
    return line  # type: ignore[no-any-return]  # a Text, or the PlainText asked for


def paused_hint(views: Sequence[GroupView]) -> str | None:
    """What `run` says when paused downloads are left: how many, and the command that queues
    them again (by id, or `--all` past a handful). None when nothing is paused."""
    paused = [v.id for v in views if v.status == "paused"]
    if not paused:
        return None
    count = "1 download is" if len(paused) == 1 else f"{len(paused)} downloads are"
    ids = " ".join(str(gid) for gid in paused)
    command = (
        f"modelfetch resume {ids}" if len(paused) <= MANY_GROUPS else "modelfetch resume --all"
    )
    return f"{count} paused ({ids}); to download {'it' if len(paused) == 1 else 'them'}: {command}"
