"""Where a model's files land on disk.

- `plain` (default): `<models_dir>/<owner>/<name>/<path in repo>`; what people point llama.cpp at.
- `hf-cache`: huggingface_hub's cache, so `hf_hub_download(..., local_files_only=True)` and
  `try_to_load_from_cache(...)` find the files:
  `<cache>/models--<owner>--<name>/blobs/<etag>` holds the bytes (etag = sha256 for LFS files, the
  git blob sha1 for small ones), `snapshots/<commit>/<path>` is a relative symlink to the blob, and
  `refs/<revision>` holds the commit sha. The blob is what we download; the symlink and the ref are
  written only once the blob is verified, so the cache never points at a partial file.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelfetch.core.paths import safe_join, safe_relpath


class Layout(enum.StrEnum):
    PLAIN = "plain"
    HF_CACHE = "hf-cache"


def repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


@dataclass(frozen=True, slots=True)
class Placement:
    dest: Path  # where the verified bytes go
    link: Path | None = None  # hf-cache: the snapshot path that must point at `dest`


def place(
    layout: Layout,
    root: Path,
    *,
    repo_id: str,
    commit: str,
    path: str,
    etag: str,
) -> Placement:
    """Compute where one repo file goes. `path` comes from a server: it is validated here."""
    rel = safe_relpath(path)
    if layout is Layout.PLAIN:
        owner, name = repo_id.split("/", 1)
        return Placement(dest=Path(safe_join(root / owner / name, str(rel))))
    repo_dir = root / repo_folder_name(repo_id)
    blob = repo_dir / "blobs" / str(safe_relpath(etag))
    link = Path(safe_join(repo_dir / "snapshots" / str(safe_relpath(commit)), str(rel)))
    return Placement(dest=blob, link=link)


def link_snapshot(placement: Placement) -> None:
    """hf-cache: point the snapshot path at the verified blob with a relative symlink."""
    if placement.link is None:
        return
    placement.link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(placement.dest, placement.link.parent)
    tmp = placement.link.with_name(placement.link.name + ".link-tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, placement.link)  # atomic: the path is either absent or a complete link


def write_ref(root: Path, repo_id: str, revision: str, commit: str) -> None:
    """hf-cache: refs/<revision> holds the commit the snapshot belongs to."""
    if revision == commit:
        return
    ref = root / repo_folder_name(repo_id) / "refs" / str(PurePosixPath(safe_relpath(revision)))
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)
