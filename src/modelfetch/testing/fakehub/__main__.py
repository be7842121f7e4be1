"""`python -m modelfetch.testing.fakehub [--port 8090] [--cdn-port 0] [--token T ...]
[--connection-rate RATE] [--client-rate RATE]`."""

from modelfetch.testing.fakehub.runner import main

raise SystemExit(main())
