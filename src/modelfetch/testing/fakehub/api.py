"""The Hub API routes: model info (at a revision), the paginated tree, typed Hub errors."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING

from aiohttp import web

from modelfetch.testing.fakehub.replies import bearer_token, error, iso, json_response, truthy
from modelfetch.testing.fakehub.repo import Commit, Repo, ensure_hashed

if TYPE_CHECKING:
    from modelfetch.testing.fakehub.server import FakeHub

__all__ = ["INVALID_CREDENTIALS", "HubApi", "find_revision", "open_repo"]

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def open_repo(hub: FakeHub, request: web.Request, *, content: bool) -> Repo:
    """The repo named in the URL if this request may see it (content: may download files)."""
    repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
    repo = hub.catalog.repos.get(repo_id)
    token = bearer_token(request)
    valid = token is not None and token in hub.tokens
    if token is not None and not valid:
        # Like the real Hub: a token it does not know is refused outright, for public repos
        # too, with this message and no X-Error-Code (huggingface_hub keys on the message).
        raise error(401, INVALID_CREDENTIALS, None, **{"X-Error-Message": INVALID_CREDENTIALS})
    if repo is None or (repo.private and not valid):
        # Like the real Hub: a private repo looks missing to outsiders, but as a 401.
        raise error(
            404 if repo is None else 401,
            f"Repository Not Found for url: {request.url}. Please make sure you specified "
            "the correct `repo_id` and `repo_type`. If you are trying to access a private "
            "or gated repo, make sure you are authenticated.",
            "RepoNotFound",
        )
    if content and repo.gated and not (valid and hub.catalog.granted(repo_id, token)):
        raise error(
            403,
            f"Access to model {repo_id} is restricted and you are not in the authorized "
            "list. Visit the repo page to ask for access.",
            "GatedRepo",
        )
    return repo


def find_revision(repo: Repo, rev: str) -> Commit:
    commit = repo.find(rev)
    if commit is None:
        raise error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    return commit


def _encode_cursor(commit: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{commit}:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, int] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        commit, _, offset = raw.partition(":")
        return commit, int(offset)
    except (ValueError, binascii.Error):
        return None


class HubApi:
    """The /api/models routes of one hub."""

    def __init__(self, hub: FakeHub) -> None:
        self._hub = hub

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/models/{owner}/{name}", self.model_info),
            web.get("/api/models/{owner}/{name}/revision/{rev}", self.model_info),
            web.get("/api/models/{owner}/{name}/tree/{rev}", self.tree),
            web.get("/api/models/{owner}/{name}/tree/{rev}/{path:.+}", self.tree),
        ]

    async def model_info(self, request: web.Request) -> web.StreamResponse:
        self._hub.fault_book.api_faults(request)
        repo = open_repo(self._hub, request, content=False)
        commit = find_revision(repo, request.match_info.get("rev", "main"))
        with_blobs = truthy(request.query.get("blobs"))
        if with_blobs:
            await ensure_hashed(commit.files.values())
        siblings: list[dict[str, object]] = []
        for path, blob in commit.files.items():
            sibling: dict[str, object] = {"rfilename": path}
            if with_blobs:
                digests = blob.digests()
                sibling |= {"blobId": digests.git_oid, "size": blob.size}
                if blob.lfs:
                    sibling["lfs"] = {
                        "sha256": digests.sha256,
                        "size": blob.size,
                        "pointerSize": digests.pointer_size,
                    }
            siblings.append(sibling)
        first = min(c.created for c in repo.commits.values())
        is_gguf = any(p.lower().endswith(".gguf") for p in commit.files)
        info: dict[str, object] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": request.match_info["owner"],
            "sha": commit.sha,
            "lastModified": iso(commit.created),
            "createdAt": iso(first),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,  # the real Hub: false | "auto" | "manual"
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"] if is_gguf else [],
            "siblings": siblings,
        }
        if is_gguf:
            info["library_name"] = "gguf"
        return json_response(info)

    async def tree(self, request: web.Request) -> web.StreamResponse:
        self._hub.fault_book.api_faults(request)
        repo = open_repo(self._hub, request, content=False)
        commit = find_revision(repo, request.match_info["rev"])
        cursor = _decode_cursor(request.query.get("cursor", ""))
        offset = 0
        if cursor is not None and cursor[0] in repo.commits:
            # The cursor pins the commit, so pages stay consistent while a branch moves.
            commit, offset = repo.commits[cursor[0]], max(0, cursor[1])
        base = request.match_info.get("path", "").strip("/")
        if base and base not in commit.directories:
            raise error(
                404, f"{base} does not exist on {request.match_info['rev']}", "EntryNotFound"
            )
        recursive = truthy(request.query.get("recursive"))
        paths = _tree_paths(commit, base, recursive)
        page = paths[offset : offset + max(1, self._hub.page_size)]
        await ensure_hashed(commit.files[p] for p in page if p in commit.files)
        headers: dict[str, str] = {}
        if offset + len(page) < len(paths):
            nxt = request.url.update_query(cursor=_encode_cursor(commit.sha, offset + len(page)))
            headers["Link"] = f'<{nxt}>; rel="next"'
        return json_response([await _tree_entry(commit, p) for p in page], headers=headers)


def _tree_paths(commit: Commit, base: str, recursive: bool) -> list[str]:
    prefix = f"{base}/" if base else ""
    everything = sorted([*commit.files, *commit.directories])
    if recursive:
        return [p for p in everything if p.startswith(prefix)]
    return [p for p in everything if p.startswith(prefix) and "/" not in p[len(prefix) :]]


async def _tree_entry(commit: Commit, path: str) -> dict[str, object]:
    blob = commit.files.get(path)
    if blob is None:
        members = [(p, b) for p, b in commit.files.items() if p.startswith(path + "/")]
        await ensure_hashed(b for _, b in members)
        listing = "\n".join(f"{p} {b.digests().git_oid}" for p, b in members)
        oid = hashlib.sha1(b"tree\0" + listing.encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}
    digests = blob.digests()
    entry: dict[str, object] = {
        "type": "file",
        "oid": digests.git_oid,
        "size": blob.size,
        "path": path,
    }
    if blob.lfs:
        entry["lfs"] = {
            "oid": digests.sha256,
            "size": blob.size,
            "pointerSize": digests.pointer_size,
        }
    return entry
