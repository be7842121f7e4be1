"""Response header fields: case-insensitive, repeated names kept in order."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

__all__ = ["Headers"]


class Headers(Mapping[str, str]):
    """Response fields: case-insensitive, several values per name kept in order. As a mapping,
    a name gives its first value; `getall` gives every value."""

    __slots__ = ("_index", "_items")

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items or ():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def getall(self, name: str, default: list[str] | None = None) -> list[str]:
        found = self._index.get(name.lower())
        if found is None:
            if default is None:
                raise KeyError(name)
            return default
        return list(found)

    def fields(self) -> list[tuple[str, str]]:
        """Every (name, value) as received, in order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"
