"""From what a user wrote (a spec) to what the manager runs (a GroupRequest).

Hub models are pinned here: one request for the commit a revision points at, then the tree at that
commit, and every file URL is `resolve/<commit>/<path>`, so a branch that moves during a download
cannot mix shards of two commits. Plain URLs get one HEAD request to learn the file name
(Content-Disposition) and size; a network failure there is not fatal (the transfer retries), a
definite answer (404, 401, 403) is.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiohttp
from yarl import URL

from modelfetch.core.errors import (
    AuthRequiredError,
    GatedError,
    NotFoundError,
    SpecError,
    TransferError,
)
from modelfetch.core.headers import content_disposition_filename, parse_content_length
from modelfetch.core.paths import safe_join, sanitize_filename
from modelfetch.core.quant import QuantGroup, choose_quant
from modelfetch.core.spec import HubSpec, UrlSpec, filename_from_url, parse_spec
from modelfetch.hub import HubClient, RepoFileEntry, ResolvedRepo
from modelfetch.layout import Layout, place, repo_folder_name
from modelfetch.requests import FileRequest, GroupRequest

_HEAD_TIMEOUT = aiohttp.ClientTimeout(total=15)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class PlanOptions:
    models_dir: Path
    layout: Layout = Layout.PLAIN
    quant: str | None = None
    revision: str | None = None
    include: tuple[str, ...] = ()  # extra repo files by glob, e.g. "mmproj-*", "config.json"
    dest_dir: Path | None = None  # plain URLs: the directory (default: models_dir)
    priority: int = 0


class Planner:
    def __init__(self, session: aiohttp.ClientSession, hub: HubClient) -> None:
        self._session = session
        self._hub = hub

    @property
    def hub(self) -> HubClient:
        return self._hub

    async def plan(self, text: str, options: PlanOptions) -> GroupRequest:
        spec = parse_spec(text, default_endpoint=self._hub.config.endpoint)
        if isinstance(spec, UrlSpec):
            return await self._plan_url(spec, options)
        return await self._plan_hub(spec, options)

    async def quants(self, repo: str, revision: str | None = None) -> list[QuantGroup]:
        spec = parse_spec(repo, default_endpoint=self._hub.config.endpoint)
        if not isinstance(spec, HubSpec):
            raise SpecError(f"not a Hub repository: {repo!r}")
        return await self._hub.quants(spec.repo_id, revision or spec.revision or "main")

    # -- Hub models ------------------------------------------------------------------------------

    async def _plan_hub(self, spec: HubSpec, options: PlanOptions) -> GroupRequest:
        if spec.quant and options.quant and spec.quant.upper() != options.quant.upper():
            raise SpecError(f"two quantizations asked for: {spec.quant} and {options.quant}")
        if spec.revision and options.revision and spec.revision != options.revision:
            raise SpecError(f"two revisions asked for: {spec.revision} and {options.revision}")
        revision = spec.revision or options.revision or "main"
        resolved = await self._hub.resolve(spec.repo_id, revision)
        quant_name: str | None = None
        if spec.path is not None:
            entry = resolved.find(spec.path)
            if entry is None:
                raise NotFoundError(
                    f"{spec.repo_id} has no file {spec.path!r} at {revision}",
                    status=404,
                    error_code="EntryNotFound",
                )
            chosen = [entry]
            name = f"{spec.repo_id}/{spec.path}"
        else:
            chosen, quant_name = _choose_model_files(resolved, spec.quant or options.quant)
            name = f"{spec.repo_id}:{quant_name}" if quant_name else spec.repo_id
        if resolved.gated:
            await self._check_gate(resolved, chosen[0])
        extras = _included(resolved, options.include, {e.path for e in chosen})
        files = tuple(self._file_request(resolved, entry, options) for entry in (*chosen, *extras))
        _refuse_shared_destinations(files)
        return GroupRequest(
            name=name,
            files=files,
            dest_dir=_repo_dir(options, resolved.repo_id),
            spec=spec.canonical(),
            priority=options.priority,
            repo_id=resolved.repo_id,
            revision=revision,
            commit=resolved.commit,
            quant=quant_name,
        )

    def _file_request(
        self, resolved: ResolvedRepo, entry: RepoFileEntry, options: PlanOptions
    ) -> FileRequest:
        placement = place(
            options.layout,
            options.models_dir,
            repo_id=resolved.repo_id,
            commit=resolved.commit,
            path=entry.path,
            etag=entry.sha256 or entry.git_oid,
        )
        return FileRequest(
            url=self._hub.resolve_url(resolved.repo_id, resolved.commit, entry.path),
            path=entry.path,
            size=entry.size,
            sha256=entry.sha256 if entry.lfs else None,
            git_oid=None if entry.lfs else entry.git_oid,
            dest=placement.dest,
            link=placement.link,
        )

    async def _check_gate(self, resolved: ResolvedRepo, entry: RepoFileEntry) -> None:
        """A gated repo lists its files to anyone; whether we may download them shows only on
        resolve. Ask once now, so a missing grant fails before anything is queued."""
        url = self._hub.resolve_url(resolved.repo_id, resolved.commit, entry.path)
        headers = {}
        if self._hub.config.token:
            headers["Authorization"] = f"Bearer {self._hub.config.token}"
        try:
            async with self._session.head(
                url, headers=headers, allow_redirects=False, timeout=_HEAD_TIMEOUT
            ) as resp:
                status, code = resp.status, resp.headers.get("X-Error-Code")
        except (aiohttp.ClientError, TimeoutError):
            return  # unknown: the transfer will find out and say so
        page = f"{self._hub.config.endpoint}/{resolved.repo_id}"
        if status == 403 and code == "GatedRepo":
            raise GatedError(
                f"{resolved.repo_id} is gated: accept its terms at {page}"
                + ("" if self._hub.config.token else " and set HF_TOKEN"),
                status=403,
                url=url,
                error_code=code,
            )
        if status == 401:
            raise AuthRequiredError(
                f"{resolved.repo_id} needs a token: set HF_TOKEN (and accept its terms at {page})",
                status=401,
                url=url,
                error_code=code,
            )

    # -- plain URLs ------------------------------------------------------------------------------

    async def _plan_url(self, spec: UrlSpec, options: PlanOptions) -> GroupRequest:
        filename, size = await self._probe(spec.url)
        dest_dir = options.dest_dir or options.models_dir
        path = sanitize_filename(filename)
        dest = Path(safe_join(dest_dir, path))
        return GroupRequest(
            name=path,
            files=(FileRequest(url=spec.url, path=path, size=size, dest=dest),),
            dest_dir=dest_dir,
            spec=spec.canonical(),
            priority=options.priority,
        )

    async def _probe(self, url: str) -> tuple[str, int | None]:
        """HEAD the URL (following redirects) for its file name and size."""
        fallback = filename_from_url(url)
        current = url
        try:
            for _ in range(10):
                async with self._session.head(
                    current, allow_redirects=False, timeout=_HEAD_TIMEOUT
                ) as resp:
                    if resp.status in _REDIRECTS and "Location" in resp.headers:
                        current = str(resp.url.join(URL(resp.headers["Location"])))
                        continue
                    if resp.status in (404, 410):
                        raise NotFoundError(
                            f"{url} was not found ({resp.status})", status=resp.status, url=url
                        )
                    if resp.status >= 400:
                        return fallback, None  # let the transfer and the policy judge it
                    name = content_disposition_filename(resp.headers.get("Content-Disposition"))
                    size = parse_content_length(resp.headers.get("Content-Length"))
                    return (name or filename_from_url(current) or fallback), size
        except (aiohttp.ClientError, TimeoutError):
            return fallback, None
        except TransferError:
            raise
        return fallback, None


def _refuse_shared_destinations(files: tuple[FileRequest, ...]) -> None:
    """Two repo paths that land in one file on disk (equal once Unicode-normalised) would race
    on one `.part`: refuse the plan, naming both."""
    seen: dict[Path | None, str] = {}
    for f in files:
        key = f.dest
        if key in seen:
            raise SpecError(
                f"{seen[key]!r} and {f.path!r} would be written to the same file; refusing both"
            )
        seen[key] = f.path


def _choose_model_files(
    resolved: ResolvedRepo, requested: str | None
) -> tuple[list[RepoFileEntry], str | None]:
    groups = resolved.quant_groups()
    if not groups:
        raise SpecError(
            f"{resolved.repo_id} has no GGUF files at {resolved.revision}; name a file "
            f"(owner/name/path) or a URL instead"
        )
    group = choose_quant(groups, requested)
    by_path = {e.path: e for e in resolved.files}
    return [by_path[p] for p in group.paths], str(group.quant)


def _included(
    resolved: ResolvedRepo, patterns: tuple[str, ...], already: set[str]
) -> list[RepoFileEntry]:
    if not patterns:
        return []
    picked: list[RepoFileEntry] = []
    matched: set[str] = set()
    for entry in resolved.files:
        if entry.path in already:
            continue
        base = PurePosixPath(entry.path).name
        for pattern in patterns:
            if fnmatch.fnmatchcase(entry.path, pattern) or fnmatch.fnmatchcase(base, pattern):
                picked.append(entry)
                matched.add(pattern)
                break
    unmatched = [p for p in patterns if p not in matched]
    if unmatched:
        raise SpecError(f"--include {' '.join(unmatched)} matched no file in {resolved.repo_id}")
    return picked


def _repo_dir(options: PlanOptions, repo_id: str) -> Path:
    if options.layout is Layout.PLAIN:
        owner, name = repo_id.split("/", 1)
        return options.models_dir / owner / name
    return options.models_dir / repo_folder_name(repo_id)
