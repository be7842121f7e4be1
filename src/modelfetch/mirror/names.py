"""The names in a mirror request (repo id, revision, file path), checked before anything uses them.

Everything here comes from a client on the network. aiohttp has already percent-decoded the
path's parts (an encoded slash arrives as `/`), so the checks see what a file system would:
`..`, absolute paths, backslashes, NUL and other control characters, non-NFC text and overlong
names are refused outright, never cleaned up into something else.
"""

from __future__ import annotations

import re

from modelfetch.core.errors import UnsafePathError
from modelfetch.core.paths import safe_relpath
from modelfetch.core.spec import validate_repo_id

__all__ = ["MAX_PATH_BYTES", "BadName", "file_path", "is_commit", "repo_id", "revision"]

MAX_PATH_BYTES = 1024  # the Hub's own limit on a path in a repo is far below any file system's
_REVISION = re.compile(r"[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*")  # "main", "v1.0", "refs/pr/1"
_MAX_REVISION = 255
_COMMIT = re.compile(r"[0-9a-f]{40}")


class BadName(ValueError):
    """A name the mirror will not look up; its message says what is wrong with it."""


def repo_id(owner: str, name: str) -> str:
    rid = f"{owner}/{name}"
    problem = validate_repo_id(rid)
    if problem is not None:
        raise BadName(f"not a repo id: {problem}")
    return rid


def revision(raw: str) -> str:
    if len(raw) > _MAX_REVISION or not _REVISION.fullmatch(raw):
        raise BadName("not a revision (a branch, tag or commit sha)")
    if any(part in (".", "..") or part.endswith(".lock") for part in raw.split("/")):
        raise BadName("not a revision (a branch, tag or commit sha)")
    return raw


def file_path(raw: str) -> str:
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadName(f"a path in a repo is at most {MAX_PATH_BYTES} bytes")
    try:
        safe = str(safe_relpath(raw))
    except UnsafePathError as exc:
        raise BadName(str(exc)) from None
    if safe != raw:  # NFC normalisation changed it: not the name the Hub lists
        raise BadName("a path in a repo must be NFC-normalised text")
    return safe


def is_commit(rev: str) -> bool:
    return _COMMIT.fullmatch(rev) is not None
