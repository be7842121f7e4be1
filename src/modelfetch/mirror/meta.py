"""What the mirror knows of one file at a commit, and the Hub's JSON shapes built from it.

The shapes are the ones huggingface_hub parses: `ModelInfo(**data)` (`siblings` with
`rfilename`, and with `?blobs=true` also `blobId`, `size` and `lfs{sha256,size,pointerSize}`),
`RepoFile(**entry)` / `RepoFolder(**entry)` for the tree and paths-info (`type`, `path`,
`oid`, `size`, `lfs{oid,size,pointerSize}`). An LFS file's `blobId`/`oid` is the git blob of its
pointer file, which follows from its sha256 and size, so even a file known only from what the
mirror holds is listed exactly as the Hub lists it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["FileMeta", "lfs_pointer", "model_info", "paths_info", "tree_listing"]


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file the Hub's git stores for an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True, slots=True)
class FileMeta:
    """One file of a repo at a commit: enough to list it and to answer its resolve headers."""

    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256 (lowercase hex)
    git_oid: str  # the git blob id: of the content, or of the pointer for an LFS file

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @classmethod
    def of(cls, path: str, size: int, sha256: str | None, git_oid: str | None) -> FileMeta:
        """From what a download record holds: an LFS file's blob id follows from its digest."""
        if sha256 is not None:
            return cls(path, size, sha256, _git_blob_oid(lfs_pointer(sha256, size)))
        if git_oid is None:
            raise ValueError(f"{path}: neither a sha256 nor a git blob id is known")
        return cls(path, size, None, git_oid)

    @property
    def etag(self) -> str:
        """What the Hub sends as (X-Linked-)ETag: the sha256 of an LFS file, else the blob id."""
        return f'"{self.sha256 or self.git_oid}"'

    def lfs_fields(self, oid_key: str) -> dict[str, Any]:
        assert self.sha256 is not None
        pointer = len(lfs_pointer(self.sha256, self.size))
        return {oid_key: self.sha256, "size": self.size, "pointerSize": pointer}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def model_info(
    repo_id: str,
    commit: str,
    files: Iterable[FileMeta],
    *,
    blobs: bool,
    gated: bool,
    private: bool = False,
    modified: float | None = None,
) -> dict[str, Any]:
    siblings: list[dict[str, Any]] = []
    for f in sorted(files, key=lambda f: f.path):
        sibling: dict[str, Any] = {"rfilename": f.path}
        if blobs:
            sibling |= {"blobId": f.git_oid, "size": f.size}
            if f.lfs:
                sibling["lfs"] = f.lfs_fields("sha256")
        siblings.append(sibling)
    owner = repo_id.partition("/")[0]
    when = _iso(modified if modified is not None else time.time())
    gguf = any(s["rfilename"].lower().endswith(".gguf") for s in siblings)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": owner,
        "sha": commit,
        "lastModified": when,
        "createdAt": when,
        "private": private,
        "gated": "manual" if gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": ["gguf"] if gguf else [],
        "siblings": siblings,
    }
    if gguf:
        info["library_name"] = "gguf"
    return info


def _file_entry(f: FileMeta) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
    if f.lfs:
        entry["lfs"] = f.lfs_fields("oid")
    return entry


def _folder_entry(path: str, members: list[FileMeta]) -> dict[str, Any]:
    # Not git's tree id (that needs every mode and name byte): a stable id of what it holds.
    listing = "\n".join(f"{f.path} {f.git_oid}" for f in sorted(members, key=lambda f: f.path))
    oid = hashlib.sha1(b"tree\0" + listing.encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _folders(files: Iterable[FileMeta]) -> set[str]:
    found: set[str] = set()
    for f in files:
        parts = f.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            found.add("/".join(parts[:i]))
    return found


def tree_listing(files: list[FileMeta], base: str, recursive: bool) -> list[dict[str, Any]] | None:
    """The tree under `base` ("" for the root), or None when `base` is no folder of it."""
    folders = _folders(files)
    if base and base not in folders:
        return None
    prefix = f"{base}/" if base else ""
    by_path = {f.path: f for f in files}
    names = sorted(p for p in (*by_path, *folders) if p.startswith(prefix))
    if not recursive:
        names = [p for p in names if "/" not in p[len(prefix) :]]
    out: list[dict[str, Any]] = []
    for name in names:
        meta = by_path.get(name)
        if meta is not None:
            out.append(_file_entry(meta))
        else:
            out.append(_folder_entry(name, [f for f in files if f.path.startswith(name + "/")]))
    return out


def paths_info(files: list[FileMeta], paths: Iterable[str]) -> list[dict[str, Any]]:
    """The entries for the asked paths that exist (files or folders), as the Hub answers."""
    by_path = {f.path: f for f in files}
    folders = _folders(files)
    out: list[dict[str, Any]] = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in by_path:
            out.append(_file_entry(by_path[path]))
        elif path in folders:
            out.append(_folder_entry(path, [f for f in files if f.path.startswith(path + "/")]))
    return out
