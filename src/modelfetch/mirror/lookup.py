"""What every mirror request first settles: the names, the commit, the client's access, the files.

Errors leave as `HubReply` (a finished response in the Hub's own shape: JSON `{"error": ...}`
with `X-Error-Code`/`X-Error-Message`), so huggingface_hub raises exactly what it raises
against the Hub: RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError, ...
A refusal from upstream is forwarded with its status and code.

Upstream unreachable: a branch is served at the commit it was last pinned at (by this process,
or by the download that brought the files), the listing is what the mirror holds at that
commit, and access goes by what the upstream said before: for this client's token since the
daemon started, or, for a repo it once served to anyone without a token, from `public.json`
in the cache directory (so a restart with the upstream down still serves public repos).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from aiohttp import web

from modelfetch.core.errors import (
    INVALID_CREDENTIALS,
    HTTPStatusError,
    NetworkError,
    SpecError,
    TokenRefusedError,
)
from modelfetch.hub import ResolvedRepo
from modelfetch.mirror import names
from modelfetch.mirror.held import HeldIndex, held_index
from modelfetch.mirror.meta import FileMeta
from modelfetch.mirror.state import MirrorState

__all__ = ["HubReply", "Looked", "client_token", "hub_error", "look_up"]


class HubReply(Exception):
    """Ends a handler with a finished response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def hub_error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> HubReply:
    extra = dict(headers or {})
    if code is not None:
        extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
    body = json.dumps({"error": message}).encode()
    return HubReply(
        web.Response(status=status, body=body, content_type="application/json", headers=extra)
    )


def _forwarded(exc: HTTPStatusError) -> HubReply:
    if isinstance(exc, TokenRefusedError):  # huggingface_hub keys this one on the message
        reply = hub_error(exc.status, INVALID_CREDENTIALS)
        reply.response.headers["X-Error-Message"] = INVALID_CREDENTIALS
        return reply
    return hub_error(exc.status, str(exc), exc.error_code)


def _unreachable(exc: NetworkError) -> HubReply:
    return hub_error(
        504, f"the mirror's upstream cannot be reached, and it holds nothing for this ({exc})"
    )


def client_token(request: web.Request) -> str | None:
    """The client's Hub token (Authorization: Bearer), to be shown to the upstream only."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


@dataclass(frozen=True, slots=True)
class Looked:
    repo_id: str
    commit: str
    token: str | None
    held: HeldIndex
    online: bool  # the upstream answered every question of this request


def _bad_name(exc: names.BadName) -> HubReply:
    return hub_error(400, str(exc))


def repo_of(request: web.Request) -> str:
    try:
        return names.repo_id(request.match_info["owner"], request.match_info["name"])
    except names.BadName as exc:
        raise _bad_name(exc) from None


def path_of(raw: str) -> str:
    try:
        return names.file_path(raw)
    except names.BadName as exc:
        raise _bad_name(exc) from None


# Seconds a read of the held index serves requests: a team's clients ask for each file twice
# (HEAD, GET) and many at once, and each read is a pass over the whole queue.
_HELD_FRESH_FOR = 1.0


def current_held(state: MirrorState) -> HeldIndex:
    """The held index, read again when it is over a second old or was dropped. A stale one
    costs little: a file not yet listed is pulled again (the manager returns the same
    download), one listed as downloading that has finished is found finished by the stream."""
    now = time.monotonic()
    if state.held is None or now - state.held_at >= _HELD_FRESH_FOR:
        state.held, state.held_at = held_index(state.manager), now
    return state.held


async def look_up(
    state: MirrorState, request: web.Request, revision: str, path: str | None
) -> Looked:
    """Names checked, the commit pinned and the client's access settled (metadata access when
    `path` is None, download access to `path` otherwise), or a HubReply."""
    repo_id = repo_of(request)
    try:
        rev = names.revision(revision)
    except names.BadName as exc:
        raise _bad_name(exc) from None
    token = client_token(request)
    held = current_held(state)
    online = True
    try:
        commit = await state.upstream.pin(repo_id, rev, token)
    except HTTPStatusError as exc:
        raise _forwarded(exc) from None
    except SpecError as exc:
        raise hub_error(400, str(exc)) from None
    except NetworkError as exc:
        online = False
        found = (
            state.upstream.last_pinned.get((repo_id, rev))
            or held.pinned.get((repo_id, rev))
            or held.newest.get(repo_id)
        )
        if found is None:
            raise _unreachable(exc) from None
        commit = found
    try:
        await state.upstream.check(repo_id, commit, path, token)
        if token is None and path is not None:
            # Its files download without a token: anyone may have them, also offline (the
            # metadata alone would not say so: a gated repo shows it to anyone).
            state.public.add(repo_id)
    except HTTPStatusError as exc:
        raise _forwarded(exc) from None
    except NetworkError as exc:
        online = False
        upstream = state.upstream
        if not (
            upstream.accepted_before(repo_id, token, content=path is not None)
            or repo_id in state.public
        ):
            raise hub_error(
                504,
                f"the mirror's upstream cannot be reached to check access to {repo_id} ({exc})",
            ) from None
    return Looked(repo_id, commit, token, held, online)


async def files_at(
    state: MirrorState, looked: Looked
) -> tuple[list[FileMeta], ResolvedRepo | None]:
    """Every file at the commit: the upstream's listing, or (unreachable) what is held of it."""
    listing: ResolvedRepo | None = state.upstream.cached_listing(looked.repo_id, looked.commit)
    if listing is None and looked.online:
        try:
            listing = await state.upstream.listing(looked.repo_id, looked.commit, looked.token)
        except HTTPStatusError as exc:
            raise _forwarded(exc) from None
        except NetworkError:
            listing = None
    if listing is not None:
        metas = [
            FileMeta(e.path, e.size, e.sha256 if e.lfs else None, e.git_oid) for e in listing.files
        ]
        return metas, listing
    held = looked.held.at(looked.repo_id, looked.commit)
    if not held:
        raise _unreachable(NetworkError("no answer")) from None
    return [h.meta for h in held.values()], None
