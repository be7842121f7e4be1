"""The pure core: no asyncio, no sockets, no files. Deterministic and tested without a loop."""
