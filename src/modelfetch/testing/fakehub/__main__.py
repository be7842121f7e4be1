"""`python -m modelfetch.testing.fakehub [--port 8090] [--cdn-port 0] [--token T ...]`."""

from modelfetch.testing.fakehub.runner import main

raise SystemExit(main())
