"""The volatile segment map of a segmented `.part`: `<name>.part.map`, cheap, frequent, trusted
only by the kernel that was running when it was written.

Why. After `kill -9` every byte whose `pwrite` returned is still in the page cache, and so still
in the `.part` for every reader on this machine; only the map that says where they are is
stale. The durable map (the store's, see transfer/checkpoints.py) is saved every second or so
and only after an `fdatasync`, which is right for a power cut but leaves a second of bytes to
fetch again after a kill. This file closes that gap: the transfer rewrites it in place every
few MiB or few tens of milliseconds (one `pwrite` of one page, no fsync, no store commit: a
commit that often would load the shared PostgreSQL queue), and a restart takes the union of
both maps.

When it is trusted. Its bytes are no more durable than the `.part`'s, so it is stamped with the
kernel's boot id (`/proc/sys/kernel/random/boot_id`, new at every boot) and the host name, and
a restart reads it only when both are the same as now: the process died, the kernel and its
page cache did not. After a power cut, a reboot, or on another host it is ignored and the
durable map alone counts. Another host: a fleet worker that takes over a file whose `.part` is
on a shared filesystem sees another boot id and uses the store's map, whose bytes were
fdatasynced to that filesystem; a `.part` on the first host's local disk is not visible to the
second at all, so nothing there can be wrongly trusted. Two containers on one kernel share a
boot id but not (usually) a host name, and are then treated as two hosts: conservative.
It also carries the `.part`'s incarnation token (the sidecar's, `PartState.token`) and total,
so a map left by an earlier `.part` of the same name is never read as this one's, and a CRC-32
over each slot, so a torn or foreign write is ignored rather than read.

Layout. Two slots of one page each, written alternately (generation n goes to slot n % 2), so
the newest complete slot is always readable even if the other was torn; the reader takes the
valid slot with the highest generation. Every claim in an older slot was true when it was
written and bytes once written stay, so an older slot is never wrong, only less complete.
A map with more records than fit in a slot (MAX_RECORDS, far more than connections) is not
journaled: the slots keep their older, still true, claims.

What it cannot see: bytes lost without a reboot (a removable disk pulled out, a writeback I/O
error reported to nobody). The SHA-256 at the end still checks every byte before it is
published, and the durable map never depended on this file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import zlib
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from modelfetch.core.segments import SegmentMap, SegmentRecord

__all__ = [
    "MAX_RECORDS",
    "SLOT_SIZE",
    "SegmentJournal",
    "merge_records",
    "read_journal",
    "resumable_map",
    "stamp",
]

MAGIC = b"MFSJ"
VERSION = 1
SLOT_SIZE = 4096  # one page: a pwrite of it is one page-cache copy
# magic, version, spare, crc32, generation, boot id, host, token, total, record count
_HEADER = struct.Struct("<4sHHIQ16s64s16sQI")
_RECORD = struct.Struct("<QQQ")
_CRC_FROM = 12  # the CRC covers everything after its own field, up to the last record
MAX_RECORDS = (SLOT_SIZE - _HEADER.size) // _RECORD.size
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@cache
def stamp() -> tuple[bytes, bytes] | None:
    """(boot id, host name) of the running kernel, as the journal stores them; None where the
    boot id is unknown (not Linux): then nothing is journaled, and only the durable map counts."""
    try:
        text = _BOOT_ID.read_text(encoding="ascii").strip()
        boot = bytes.fromhex(text.replace("-", ""))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if len(boot) != 16:
        return None
    host = socket.gethostname().encode("utf-8", "replace")[:64].ljust(64, b"\0")
    return boot, host


def _token_bytes(token: str) -> bytes:
    return token.encode("ascii", "replace")[:16].ljust(16, b"\0")


class SegmentJournal:
    """Writes the volatile map of one segmented `.part` (see the module docstring). Opened on
    the first write, truncated then: a resumed map was made durable before the `.part` was
    touched (transfer/checkpoints.py), so what an earlier process left here is not needed."""

    def __init__(self, path: Path, *, token: str, total: int) -> None:
        self.path = path
        self._token = _token_bytes(token)
        self._total = total
        self._stamp = stamp()
        self._fd: int | None = None
        self._generation = 0
        self._slot = bytearray(SLOT_SIZE)
        self.disabled = self._stamp is None
        self.writes = 0  # slots written (for tests and benchmarks)

    def write(self, records: Sequence[SegmentRecord]) -> None:
        """Record `records` (bytes counted only after their pwrite returned). Never raises: a
        journal that cannot be written is removed, and the durable map alone counts."""
        if self.disabled or len(records) > MAX_RECORDS:
            return
        assert self._stamp is not None
        try:
            if self._fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o644)
            self._generation += 1
            slot = self._slot
            boot, host = self._stamp
            _HEADER.pack_into(
                slot,
                0,
                MAGIC,
                VERSION,
                0,
                0,
                self._generation,
                boot,
                host,
                self._token,
                self._total,
                len(records),
            )
            offset = _HEADER.size
            for r in records:
                _RECORD.pack_into(slot, offset, r.start, r.end, r.done)
                offset += _RECORD.size
            crc = zlib.crc32(memoryview(slot)[_CRC_FROM:offset])
            struct.pack_into("<I", slot, 8, crc)
            # The whole page, so a stale tail from an earlier, longer map is never read: the
            # CRC covers only `count` records, and those are all rewritten.
            os.pwrite(self._fd, slot, (self._generation % 2) * SLOT_SIZE)
            self.writes += 1
        except OSError:
            self.remove()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self) -> None:
        """Close and delete the journal, and write no more: the durable map alone counts."""
        self.disabled = True
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def read_journal(path: Path, *, token: str | None, total: int) -> tuple[SegmentRecord, ...] | None:
    """The newest valid map in the journal at `path`, if it may be trusted now: written by this
    kernel on this host (see the module docstring), for the `.part` incarnation `token` of
    `total` bytes, with an intact CRC, covering the file exactly once. Else None."""
    now = stamp()
    if token is None or now is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(2 * SLOT_SIZE)
    except OSError:
        return None
    want_token = _token_bytes(token)
    best: tuple[int, tuple[SegmentRecord, ...]] | None = None
    for base in (0, SLOT_SIZE):
        slot = data[base : base + SLOT_SIZE]
        if len(slot) < _HEADER.size:
            continue
        magic, version, _, crc, generation, boot, host, tok, size, count = _HEADER.unpack_from(slot)
        if magic != MAGIC or version != VERSION or count > MAX_RECORDS:
            continue
        end = _HEADER.size + count * _RECORD.size
        if len(slot) < end or zlib.crc32(slot[_CRC_FROM:end]) != crc:
            continue  # torn, or not ours
        if (boot, host) != now or tok != want_token or size != total:
            continue  # another boot or host (the page cache it counted on is gone), another file
        if best is not None and generation <= best[0]:
            continue
        records = tuple(
            SegmentRecord(*_RECORD.unpack_from(slot, _HEADER.size + i * _RECORD.size))
            for i in range(count)
        )
        try:
            SegmentMap(total, records)
        except ValueError:
            continue
        best = (generation, records)
    return best[1] if best is not None else None


def resumable_map(
    journal: Path, token: str | None, total: int, durable: Sequence[SegmentRecord] | None, size: int
) -> SegmentMap | None:
    """What a segmented `.part` of `total` bytes (`size` long on disk, incarnation `token`)
    resumes from: the durable map joined with the volatile one in `journal` when this kernel
    wrote it; None if neither fits. The transfer resumes from it, and the manager counts it."""
    if durable is not None:
        try:
            SegmentMap(total, durable)
        except ValueError:
            durable = None
    volatile = read_journal(journal, token=token, total=total)
    if durable is None and volatile is None:
        return None
    try:
        segmap = SegmentMap(total, merge_records(total, durable, volatile))
    except ValueError:
        return None
    # Bytes the map counts must lie inside the file (its allocation may not have happened).
    if any(s.done and s.pos > size for s in segmap):
        return None
    return segmap


def merge_records(total: int, *maps: Iterable[SegmentRecord] | None) -> tuple[SegmentRecord, ...]:
    """One map claiming every byte that any of `maps` claims (each claim true on its own: the
    union is too), covering [0, total) exactly once. It keeps every segment boundary of the
    maps (a piece not begun yet still starts where it did), so the union of two equal maps is
    that map."""
    records = [r for m in maps if m for r in m]
    spans: list[list[int]] = []
    for start, end in sorted((r.start, r.start + r.done) for r in records if r.done):
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    # Every claimed span starts at a boundary, so within [b, next b) the claimed bytes are a
    # prefix: what is left of the span that covers b.
    bounds = sorted({0, total, *(r.start for r in records), *(a for a, _ in spans)})
    out: list[SegmentRecord] = []
    i = 0
    for b, following in itertools.pairwise(bounds):
        while i < len(spans) and spans[i][1] <= b:
            i += 1
        covered = spans[i][1] if i < len(spans) and spans[i][0] <= b else b
        out.append(SegmentRecord(b, following, min(covered, following) - b))
    return SegmentMap(total, out).records() if out else ()
