"""Which daemon may be handed this client's Hub token, and which token that is.

Kept apart from `remote_codec` (which rebuilds views, and so imports them) because the light
client (`remote_light`) asks both questions before it sends its first request, on a path where
every import is time the user waits.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["client_hub_token", "is_loopback_address"]


def client_hub_token(environ: Any = None) -> str | None:
    """The Hub token in this client's environment (HF_TOKEN, then HUGGING_FACE_HUB_TOKEN)."""
    env = os.environ if environ is None else environ
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = str(env.get(name) or "").strip()
        if value:
            return value
    return None


def is_loopback_address(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
