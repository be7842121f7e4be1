"""Stand-ins for the two rich objects the summary prints with, for output that is not a terminal.

Without a terminal rich writes a Text's characters and nothing else (no colours, no cursor
moves), so these give the same lines without importing rich: the daemon path of `modelfetch get`
on a pipe prints its summary with them.
"""

from __future__ import annotations

from typing import IO, Any


class PlainText:
    """The part of `rich.text.Text` the summary uses: text appended in pieces; styles dropped."""

    def __init__(self, text: str = "", style: str | None = None) -> None:
        self._parts = [text]

    def append(self, text: str, style: str | None = None) -> PlainText:
        self._parts.append(text)
        return self

    def __str__(self) -> str:
        return "".join(self._parts)


class PlainConsole:
    """The part of `rich.console.Console` the summary uses: `print` of strings and PlainTexts."""

    def __init__(self, stream: IO[str]) -> None:
        self.file = stream

    def print(self, *objects: Any, style: str | None = None, **_: Any) -> None:
        self.file.write(" ".join(str(o) for o in objects) + "\n")
        self.file.flush()
