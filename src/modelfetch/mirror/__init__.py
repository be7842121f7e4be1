"""A pull-through Hub mirror: the Hub's read side at the daemon's origin (`serve --mirror`).

Point `HF_ENDPOINT` at the daemon and huggingface_hub, `hf download`, llama.cpp's `-hf` and
modelfetch on other hosts get their files from it; a file it does not hold is fetched upstream
once, on the daemon's own queue, and streamed to every client asking meanwhile. See
docs/mirror.md. Rooms: `names` (hostile input refused), `meta` (the Hub's JSON shapes),
`held` (what the queue holds), `upstream` (pins, listings, access), `lookup` (the steps every
request takes), `pull` (a miss becomes a download), `stream` (bytes as they arrive),
`api` and `resolve` (the routes), `app` (mounting).
"""

from modelfetch.mirror.app import MirrorOptions, make_state, mount, public_app

__all__ = ["MirrorOptions", "make_state", "mount", "public_app"]
