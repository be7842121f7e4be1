"""Where one transfer's time went: request, receive (and pwrite within it), hash, fsync, rename.

A verified download is a pipeline of stages that overlap (the digest thread hashes while the
connections receive), so the wall time is not their sum. What shows where time goes is when
each stage ended relative to the others: `hash_tail` is what hashing added after the last byte,
`fsync` and `rename` are what publishing added after the hash. Every figure is measured with
`time.perf_counter` at a few points per transfer and around each pwrite (a thousand calls per
GiB: nothing next to the copies they time). benchmarks/bench_transfer.py prints them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stages:
    """Seconds, wall clock unless noted. `receive` runs from the first response head to the last
    body byte on disk; `pwrite` is the part of it spent inside pwrite (the page-cache copies),
    summed over connections; `hash` is the digest thread's busy time (alongside `receive`);
    `hash_tail` runs from the last byte to the digests' end; `fsync` and `rename` (the rename
    and the directory's fsync) are the publish."""

    request: float
    receive: float
    pwrite: float
    hash: float
    hash_tail: float
    fsync: float
    rename: float

    def as_dict(self) -> dict[str, float]:
        return {name: round(getattr(self, name), 4) for name in self.__slots__}


class StageClock:
    """The time stamps one transfer collects as it goes (one per attempt)."""

    __slots__ = ("began", "fsync", "hash", "hash_done", "head", "last_byte", "rename")

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.head: float | None = None  # the response head whose body is received
        self.last_byte: float | None = None
        self.hash_done: float | None = None
        self.hash = 0.0
        self.fsync = 0.0
        self.rename = 0.0

    def mark_head(self) -> None:
        if self.head is None:
            self.head = time.perf_counter()

    def mark_last_byte(self) -> None:
        self.last_byte = time.perf_counter()

    def mark_hash_done(self, busy: float) -> None:
        self.hash_done = time.perf_counter()
        self.hash = busy

    def stages(self, pwrite: float) -> Stages:
        head = self.head if self.head is not None else self.began
        last = self.last_byte if self.last_byte is not None else head
        hashed = self.hash_done if self.hash_done is not None else last
        return Stages(
            request=head - self.began,
            receive=last - head,
            pwrite=pwrite,
            hash=self.hash,
            hash_tail=max(0.0, hashed - last),
            fsync=self.fsync,
            rename=self.rename,
        )
