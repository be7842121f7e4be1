"""Fetching one file: the contract (`api`), the transfer (`fetch`) and its disk side (`sink`).

The manager uses only what is re-exported here. Names resolve on first use (PEP 562), so a
process that only edits or lists the queue (`modelfetch ls`, `add` without a daemon) never
loads the HTTP client and the transfer machinery it does not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelfetch._lazy import resolve

if TYPE_CHECKING:
    from modelfetch.core.segments import SegmentRecord
    from modelfetch.transfer.api import (
        Credentials,
        ProgressCallback,
        SegmentsCallback,
        StopSignal,
        TransferRequest,
        TransferResult,
    )
    from modelfetch.transfer.fetch import fetch_file
    from modelfetch.transfer.limiter import ConnectionSlots, TokenBucket
    from modelfetch.transfer.segments import partial_bytes
    from modelfetch.transfer.session import TransferSession, make_session
    from modelfetch.transfer.stages import Stages

_HOMES = {
    "SegmentRecord": "modelfetch.core.segments",
    "Credentials": "modelfetch.transfer.api",
    "ProgressCallback": "modelfetch.transfer.api",
    "SegmentsCallback": "modelfetch.transfer.api",
    "StopSignal": "modelfetch.transfer.api",
    "TransferRequest": "modelfetch.transfer.api",
    "TransferResult": "modelfetch.transfer.api",
    "fetch_file": "modelfetch.transfer.fetch",
    "ConnectionSlots": "modelfetch.transfer.limiter",
    "TokenBucket": "modelfetch.transfer.limiter",
    "partial_bytes": "modelfetch.transfer.segments",
    "TransferSession": "modelfetch.transfer.session",
    "make_session": "modelfetch.transfer.session",
    "Stages": "modelfetch.transfer.stages",
}

__all__ = [
    "ConnectionSlots",
    "Credentials",
    "ProgressCallback",
    "SegmentRecord",
    "SegmentsCallback",
    "Stages",
    "StopSignal",
    "TokenBucket",
    "TransferRequest",
    "TransferResult",
    "TransferSession",
    "fetch_file",
    "make_session",
    "partial_bytes",
]


def __getattr__(name: str) -> Any:
    return resolve(globals(), _HOMES, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
