"""The transfer's entry points under their old module path, `modelfetch.transfer.http`.

The code lives in fetch.py (`fetch_file`), session.py (`make_session`) and failures.py; this
module keeps imports that predate the split working.
"""

from __future__ import annotations

from modelfetch.transfer.failures import translate_exception
from modelfetch.transfer.fetch import fetch_file
from modelfetch.transfer.session import TransferSession, make_session
from modelfetch.transfer.state import MIN_CHUNK_SIZE, PROGRESS_INTERVAL

_translate_exception = translate_exception  # tests/test_wire.py imports it by this name

__all__ = ["MIN_CHUNK_SIZE", "PROGRESS_INTERVAL", "TransferSession", "fetch_file", "make_session"]
