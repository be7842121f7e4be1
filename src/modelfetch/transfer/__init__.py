"""Fetching one file: the contract (`api`), the transfer (`fetch`) and its disk side (`sink`).

The manager uses only what is re-exported here.
"""

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

__all__ = [
    "ConnectionSlots",
    "Credentials",
    "ProgressCallback",
    "SegmentRecord",
    "SegmentsCallback",
    "StopSignal",
    "TokenBucket",
    "TransferRequest",
    "TransferResult",
    "TransferSession",
    "fetch_file",
    "make_session",
    "partial_bytes",
]
