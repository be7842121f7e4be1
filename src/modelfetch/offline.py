"""Offline mode (`HF_HUB_OFFLINE=1`, `--offline`): what a spec names, found on disk alone.

No network request at all, not even to resolve a revision: a Hub spec is looked up where its
layout puts files. `hf-cache`: as huggingface_hub does offline, `refs/<revision>` gives the
commit (a full sha names its snapshot directly) and `snapshots/<commit>/` the files. `plain`:
`<root>/<owner>/<name>/` holds one version of a repo, so a revision cannot be told apart there
and is not checked. A quantization is chosen among the files present by the same rules as
online (`core.quant`), so `owner/name` gives what it would have downloaded only if that set is
complete on disk. Only final files count: a `.part` is never complete.

A spec that cannot be served is an `OfflineMissingError` naming what is missing and where it
was looked for; it is a request that cannot be met as asked (exit status 2), like a bad spec.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelfetch.core.errors import SpecError
from modelfetch.core.paths import PARTIAL_SUFFIXES
from modelfetch.core.quant import choose_quant, group_gguf_files
from modelfetch.core.spec import DEFAULT_ENDPOINT, HubSpec, filename_from_url, parse_spec
from modelfetch.layout import repo_folder_name

__all__ = ["OfflineMissingError", "OnDisk", "find_on_disk"]

_COMMIT = re.compile(r"[0-9a-f]{40}")
_PARTIAL_SUFFIXES = (*PARTIAL_SUFFIXES, ".link-tmp", ".tmp")


class OfflineMissingError(SpecError):
    """Offline, and what the spec names is not (completely) on disk."""

    kind = "offline_missing"


@dataclass(frozen=True, slots=True)
class OnDisk:
    """A spec served from disk: its display name and its files (as a program opens them)."""

    name: str
    paths: tuple[Path, ...]
    where: Path  # the directory the files were found in (a snapshot, for hf-cache)


def _missing(what: str, where: Path) -> OfflineMissingError:
    return OfflineMissingError(f"offline: {what} is not on disk (looked in {where})")


def _files_under(folder: Path) -> list[tuple[str, int]]:
    """(path relative to `folder`, size) of every complete file below it; a symlink counts
    when its target exists (a snapshot link is written only once its blob is verified)."""
    found: list[tuple[str, int]] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(_PARTIAL_SUFFIXES) or not path.is_file():
            continue
        found.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return found


def _matches(path: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(
        PurePosixPath(path).name, pattern
    )


def _snapshot(repo_dir: Path, revision: str, repo_id: str) -> Path:
    """hf-cache: the snapshot directory `revision` names, as huggingface_hub finds it."""
    if _COMMIT.fullmatch(revision) and (repo_dir / "snapshots" / revision).is_dir():
        return repo_dir / "snapshots" / revision
    ref = repo_dir / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise _missing(f"{repo_id} at {revision}", repo_dir) from None
    if not _COMMIT.fullmatch(commit) or not (repo_dir / "snapshots" / commit).is_dir():
        raise _missing(f"{repo_id} at {revision} (commit {commit[:12]})", repo_dir)
    return repo_dir / "snapshots" / commit


def _select(
    spec: HubSpec,
    folder: Path,
    *,
    quant: str | None,
    include: Sequence[str],
    exclude: Sequence[str],
) -> tuple[str, list[str]]:
    """The display name and the repo paths the spec selects among the files in `folder`."""
    if spec.path is not None:
        target = folder / spec.path
        if not target.is_file():
            raise _missing(f"{spec.repo_id}/{spec.path}", folder)
        return f"{spec.repo_id}/{spec.path}", [spec.path]
    present = _files_under(folder)
    requested = spec.quant or quant
    chosen: list[str] = []
    name = spec.repo_id
    if requested or not include:
        groups = group_gguf_files(present)
        if not groups:
            raise _missing(f"a GGUF model of {spec.repo_id}", folder)
        try:
            group = choose_quant(groups, requested)
        except SpecError as exc:
            what = f"{spec.repo_id}:{requested}" if requested else f"a model of {spec.repo_id}"
            why = exc.message.replace("in this repository", "on disk")
            raise OfflineMissingError(
                f"offline: {what} is not on disk (looked in {folder}): {why}"
            ) from None
        chosen = [p for p in group.paths if not any(_matches(p, x) for x in exclude)]
        name = f"{spec.repo_id}:{group.name}"
    for pattern in include:
        hits = [p for p, _ in present if _matches(p, pattern) and p not in chosen]
        hits = [p for p in hits if not any(_matches(p, x) for x in exclude)]
        if not hits and not any(_matches(p, pattern) for p in chosen):
            raise _missing(f"--include {pattern} of {spec.repo_id}", folder)
        chosen.extend(hits)
    if not chosen:
        raise _missing(f"anything of {spec.repo_id} that --exclude leaves", folder)
    return name, chosen


def find_on_disk(
    text: str,
    *,
    layout: str,
    root: Path,
    urls_dir: Path,
    endpoint: str = DEFAULT_ENDPOINT,
    quant: str | None = None,
    revision: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> OnDisk:
    """What `text` names, found under `root` (a Hub model, laid out by `layout`) or `urls_dir`
    (a plain URL, by the name its URL ends in). OfflineMissingError if it is not all there."""
    spec = parse_spec(text, default_endpoint=endpoint)
    if not isinstance(spec, HubSpec):
        name = filename_from_url(spec.url)
        path = urls_dir / name
        if not path.is_file():
            raise _missing(spec.url, urls_dir)
        return OnDisk(name=name, paths=(path,), where=urls_dir)
    if layout == "hf-cache":
        repo_dir = root / repo_folder_name(spec.repo_id)
        folder = _snapshot(repo_dir, spec.revision or revision or "main", spec.repo_id)
    else:
        owner, repo_name = spec.repo_id.split("/", 1)
        folder = root / owner / repo_name
    name, paths = _select(spec, folder, quant=quant, include=include, exclude=exclude)
    return OnDisk(name=name, paths=tuple(folder / p for p in paths), where=folder)
