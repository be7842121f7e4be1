"""A faithful fake of the Hugging Face Hub and its CDN on loopback, with fault knobs.

Two aiohttp.web servers in the caller's event loop: the Hub (API, resolve) and a separate CDN
origin that LFS resolves redirect to. File bodies are generated on the fly from (seed, offset), so
multi-GiB files cost no memory. Bodies can be capped per connection and per client
(`FakeHub(connection_rate=..., client_rate=...)`). The contract lives in docs/dev/fakehub-api.md.

Run alone: `python -m modelfetch.testing.fakehub [--port 8090] [--cdn-port 0]`.
"""

from __future__ import annotations

from modelfetch.testing.fakehub.faults import Fault, FaultKind, FaultOrigin
from modelfetch.testing.fakehub.log import Origin, RequestRecord
from modelfetch.testing.fakehub.repo import FileInfo, RepoFile
from modelfetch.testing.fakehub.runner import main
from modelfetch.testing.fakehub.sample import SAMPLE_REPO, add_sample_repo
from modelfetch.testing.fakehub.server import FakeHub

__all__ = [
    "SAMPLE_REPO",
    "FakeHub",
    "Fault",
    "FaultKind",
    "FaultOrigin",
    "FileInfo",
    "Origin",
    "RepoFile",
    "RequestRecord",
    "add_sample_repo",
    "main",
]
