"""What a caller can ask the manager for.

A `GroupRequest` is the lowest level: an explicit list of files that belong together (a model's
shards and extras, or one URL). Spec strings (`owner/name:Q4_K_M`, `https://…`) are turned into a
`GroupRequest` by the planner, which talks to the Hub; tests and scripts may build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIRROR_SPEC_PREFIX = "mirror "
"""How a download the Hub mirror pulled through is told apart in the queue (its `spec`)."""


@dataclass(frozen=True, slots=True)
class FileRequest:
    url: str
    path: str  # relative path under the group's destination directory (validated by the planner)
    size: int | None = None
    sha256: str | None = None
    git_oid: str | None = None
    dest: Path | None = None  # absolute destination; default: the group's dest_dir / path
    link: Path | None = None  # hf-cache: the snapshot path to link to `dest` once verified


@dataclass(frozen=True, slots=True)
class GroupRequest:
    name: str  # display name: owner/name:QUANT, or the file name
    files: tuple[FileRequest, ...]
    dest_dir: Path
    spec: str = ""  # what the user wrote (never with a token in it)
    priority: int = 0
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    quant: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def dedupe_key(self) -> str:
        """Asking for the same thing into the same place is the same download."""
        if self.repo_id and self.commit is not None:
            what = f"hf:{self.repo_id}@{self.revision or 'main'}:{self.quant or ''}:" + ",".join(
                sorted(f.path for f in self.files)
            )
        else:
            what = "urls:" + ",".join(sorted(f.url for f in self.files))
        return f"{what}->{self.dest_dir}"
