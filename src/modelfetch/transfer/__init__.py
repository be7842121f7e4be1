"""Fetching one file: the contract (`api`), the HTTP transfer (`http`) and its disk side (`sink`).

The manager uses only what is re-exported here.
"""

from modelfetch.transfer.api import (
    Credentials,
    ProgressCallback,
    StopSignal,
    TransferRequest,
    TransferResult,
)
from modelfetch.transfer.http import fetch_file, make_session

__all__ = [
    "Credentials",
    "ProgressCallback",
    "StopSignal",
    "TransferRequest",
    "TransferResult",
    "fetch_file",
    "make_session",
]
