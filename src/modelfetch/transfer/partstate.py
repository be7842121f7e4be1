"""The sidecar beside a `.part` (`.part.json`): what the partial holds, written and read back."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PartState:
    """What a `.part` holds, recorded beside it when it is begun, so a later attempt knows whether
    the prefix is still the beginning of the same file (and what to send as `If-Range`)."""

    url: str
    validator: str | None  # the body hop's strong ETag (quoted, as sent) or its Last-Modified
    total: int | None
    sha256: str | None  # the expected digest at the time, when one was known
    version: int = 1
    # A segmented `.part` (written at any offset; its segment map says what is on disk) is
    # saved as version 2, which a modelfetch that only knows prefix files discards.
    segmented: bool = False
    # A segmented `.part`'s incarnation: random, made when it is begun. Its volatile segment
    # map (transfer/segment_journal.py) carries the same token, so a map left by an earlier
    # `.part` of the same name is never taken for this one's.
    token: str | None = None

    def save(self, path: Path) -> None:
        """Atomic replace, no fsync: losing the sidecar in a crash only costs a restart."""
        fields = asdict(self)
        del fields["segmented"]
        if self.token is None:
            del fields["token"]
        if self.segmented:
            fields["version"] = 2
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(fields, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PartState | None:
        """The recorded state, or None when missing, unreadable or not ours."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("version") not in (1, 2):
            return None
        url, validator, total, sha256 = (
            raw.get(k) for k in ("url", "validator", "total", "sha256")
        )
        if not isinstance(url, str):
            return None
        if validator is not None and not isinstance(validator, str):
            return None
        if total is not None and (not isinstance(total, int) or total < 0):
            return None
        if sha256 is not None and not isinstance(sha256, str):
            return None
        segmented = raw["version"] == 2
        if segmented and total is None:
            return None
        token = raw.get("token")
        return cls(
            url=url,
            validator=validator,
            total=total,
            sha256=sha256,
            segmented=segmented,
            token=token if isinstance(token, str) else None,
        )
