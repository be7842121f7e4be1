"""Repos the upstream served without any token: readable by anyone while it is unreachable."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

__all__ = ["PublicRepos"]


class PublicRepos:
    """Repos the upstream served without any token: readable offline by anyone (persisted)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._repos: set[str] = set()
        with contextlib.suppress(OSError, ValueError, TypeError):
            raw = json.loads(path.read_text(encoding="utf-8"))
            self._repos = {r for r in raw if isinstance(r, str)}

    def __contains__(self, repo_id: object) -> bool:
        return repo_id in self._repos

    def add(self, repo_id: str) -> None:
        if repo_id in self._repos:
            return
        self._repos.add(repo_id)
        with contextlib.suppress(OSError):
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(sorted(self._repos)), encoding="utf-8")
            os.replace(tmp, self._path)
