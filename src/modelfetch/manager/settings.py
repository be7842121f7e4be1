"""The manager's tunables (`ManagerSettings`) and where its state directory lives by default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from modelfetch.core.network import NetworkSettings
from modelfetch.core.policy import RetryPolicy


def default_home() -> Path:
    env = os.environ.get("MODELFETCH_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("modelfetch"))


@dataclass
class ManagerSettings:
    # Files downloading at once. A file whose bytes are all in no longer counts while its
    # publish (hash tail, fsync, rename) runs, up to max_active such files (files.downloading).
    max_active: int = 3
    stall_timeout: float = 30.0
    progress_interval: float = 0.5
    checkpoint_interval: float = 1.0
    disk_check_interval: float = 5.0
    shutdown_grace: float = 5.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Multi-connection transfers (transfer/segments.py). A file of at least segment_threshold
    # bytes (size known from the plan) is fetched over ranged connections in pieces of at least
    # min_segment_size: 8 at first, more while they add throughput (a server that caps each
    # connection), at most connections_per_file; 1 means one stream per file. 32, not aria2's
    # hard 16: behind a per-connection cap (a CDN's share per connection) speed grows with
    # connections until the link or the CPU is the limit, and the probe stops there (case 2 of
    # docs/benchmarks.md).
    connections_per_file: int = 32
    segment_threshold: int = 64 << 20
    min_segment_size: int = 16 << 20
    max_connections: int = 64  # concurrent connections over every download
    max_connections_per_host: int = 32  # ... to any one host (0: no per-host cap)
    rate_limit: int | None = None  # bytes/s over every download (None: unlimited)
    allowed_hosts: frozenset[str] | None = None  # hosts transfers may reach (None: any)
    # Proxies and CA bundle for every request to the outside: transfers, the Hub API, probes
    # (None: read from the environment when the manager starts, as `hf` would).
    network: NetworkSettings | None = None
    # A queue several workers share (PostgreSQL, manager/fleet.py): how long a claim on a file
    # lasts unless renewed (renewed every third of it), and how often the in-memory mirror
    # follows what the other workers committed.
    # Files a client is waiting on right now (the mirror's pulls, `DownloadManager.expedite`)
    # start at once, beyond max_active, up to this many more at a time: a Hub client that
    # hears nothing for 10 s gives up, and it cannot hear anything while the file is queued.
    max_expedited: int = 8
    lease_seconds: float = 30.0
    fleet_poll_interval: float = 1.0
    # A worker running two files more than an idle one hands one back to the queue for it
    # (manager/fleet_balance.py), if it has at least this many bytes left.
    fleet_handoff_min_left: int = 64 << 20
