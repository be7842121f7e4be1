"""The daemon: the manager behind an HTTP API, a live event stream and a web dashboard.

`serve()` (daemon.py) runs until cancelled, publishing `<home>/daemon.json` while it listens.
`app.py` builds the aiohttp application from the route families in `routes/`.
"""

from __future__ import annotations

from modelfetch.server.daemon import DAEMON_FILE, TOKEN_ENV, daemon_file, serve

__all__ = ["DAEMON_FILE", "TOKEN_ENV", "daemon_file", "serve"]
