"""From what a user wrote (a spec) to what the manager runs (a GroupRequest).

Hub models are pinned here: one request for the commit a revision points at, then the tree at that
commit, and every file URL is `resolve/<commit>/<path>`, so a branch that moves during a download
cannot mix shards of two commits. Plain URLs get one HEAD request to learn the file name
(Content-Disposition) and size; a network failure there is not fatal (the transfer retries), a
definite answer (404, 401, 403) is.

A list of specs is planned `PLAN_CONCURRENCY` at a time (`plan_each`), results in the order given.
Plain-URL probes go through the transfers' own HTTP client when the caller passes one
(`probe_session`), and the Hub client (and aiohttp under it) can be made on first use: a list of
plain URLs then never imports aiohttp, whose import alone costs 0.15-0.25 s.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from modelfetch.core.errors import (
    AuthRequiredError,
    GatedError,
    ModelfetchError,
    NotFoundError,
    SpecError,
)
from modelfetch.core.paths import safe_join, sanitize_filename
from modelfetch.core.quant import QuantGroup, choose_quant
from modelfetch.core.spec import HubSpec, UrlSpec, parse_spec
from modelfetch.layout import Layout, place, repo_folder_name
from modelfetch.probe import HEAD_SECONDS, UrlProber, hold_if_asked
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.transfer.holds import HostHolds, host_key

if TYPE_CHECKING:
    import aiohttp

    from modelfetch.hub import HubClient, RepoFileEntry, ResolvedRepo
    from modelfetch.hubconfig import HubConfig
    from modelfetch.transfer import TransferSession

    # Makes the aiohttp session and the Hub client on it, when a spec first needs the Hub.
    HubFactory = Callable[[], tuple[aiohttp.ClientSession, HubClient]]

__all__ = ["PLAN_CONCURRENCY", "PlanOptions", "Planner"]

PLAN_CONCURRENCY = 16  # specs of one list planned at once (each is a HEAD or a few Hub calls)


@dataclass(frozen=True, slots=True)
class PlanOptions:
    models_dir: Path
    layout: Layout = Layout.PLAIN
    quant: str | None = None
    revision: str | None = None
    # Extra repo files by glob, e.g. "mmproj-*", "config.json"; with no quantization named
    # (neither in the spec nor as `quant`), they are the whole selection, as `hf download
    # --include` is: no default quant is added.
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # repo files left out by glob (not a file the spec names)
    dest_dir: Path | None = None  # plain URLs: the directory (default: models_dir)
    priority: int = 0


class Planner:
    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        hub: HubClient | HubFactory,
        *,
        probe_session: TransferSession | None = None,
        hub_config: HubConfig | None = None,
        holds: HostHolds | None = None,
    ) -> None:
        """`session` and `hub`: the aiohttp session (Hub calls, the gated-repo check and,
        without `probe_session`, plain-URL probes) and the Hub client on it; or `session`
        None and `hub` a function making both on first use, with `hub_config` (parsing a spec
        needs the endpoint before any Hub call). `probe_session`: the transfers' HTTP client
        (`modelfetch.transfer.make_session()`; not closed here) for plain-URL probes. `holds`:
        the hosts that asked to wait, shared with the transfers (its own when None): every
        probe waits out its host's hold, and a 429/503 with Retry-After holds it."""
        self._holds = HostHolds() if holds is None else holds
        self._prober = UrlProber(lambda: self._api()[0], probe_session, self._holds)
        self._session = session
        self._hub_client: HubClient | None = None
        self._make_hub: HubFactory | None = None
        if callable(hub):
            if session is not None or hub_config is None:
                raise TypeError("a Hub client made on first use: session None, hub_config given")
            self._make_hub, self._hub_config = hub, hub_config
        else:
            if session is None:
                raise TypeError("a Hub client given: its aiohttp session too")
            self._hub_client, self._hub_config = hub, hub_config or hub.config

    @property
    def hub(self) -> HubClient:
        return self._api()[1]

    def _api(self) -> tuple[aiohttp.ClientSession, HubClient]:
        if self._hub_client is None or self._session is None:
            assert self._make_hub is not None
            self._session, self._hub_client = self._make_hub()
        return self._session, self._hub_client

    async def plan(self, text: str, options: PlanOptions) -> GroupRequest:
        spec = parse_spec(text, default_endpoint=self._hub_config.endpoint)
        if isinstance(spec, UrlSpec):
            return await self._plan_url(spec, options)
        return await self._plan_hub(spec, options)

    async def plan_each(
        self,
        texts: Sequence[str],
        options: PlanOptions,
        *,
        concurrency: int = PLAN_CONCURRENCY,
    ) -> AsyncGenerator[GroupRequest | ModelfetchError, None]:
        """Plan every spec, `concurrency` at a time; yield each outcome in the order of
        `texts`, as soon as it and all before it are known, so the caller can enqueue the
        first while the rest are probed. A spec that cannot be planned yields its error
        (its message names the URL or the repo) and the others go on; anything else (a bug)
        is raised. Leaving early cancels what is still running."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(text: str) -> GroupRequest | ModelfetchError:
            async with gate:
                try:
                    return await self.plan(text, options)
                except ModelfetchError as exc:
                    return exc

        tasks = [asyncio.create_task(one(text)) for text in texts]
        try:
            for task in tasks:
                yield await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def plan_many(
        self,
        texts: Sequence[str],
        options: PlanOptions,
        *,
        concurrency: int = PLAN_CONCURRENCY,
    ) -> list[GroupRequest | ModelfetchError]:
        """`plan_each`, collected."""
        return [r async for r in self.plan_each(texts, options, concurrency=concurrency)]

    async def quants(self, repo: str, revision: str | None = None) -> list[QuantGroup]:
        spec = parse_spec(repo, default_endpoint=self._hub_config.endpoint)
        if not isinstance(spec, HubSpec):
            raise SpecError(f"not a Hub repository: {repo!r}")
        return await self.hub.quants(spec.repo_id, revision or spec.revision or "main")

    # -- Hub models ------------------------------------------------------------------------------

    async def _plan_hub(self, spec: HubSpec, options: PlanOptions) -> GroupRequest:
        if spec.quant and options.quant and spec.quant.upper() != options.quant.upper():
            raise SpecError(f"two quantizations asked for: {spec.quant} and {options.quant}")
        if spec.revision and options.revision and spec.revision != options.revision:
            raise SpecError(f"two revisions asked for: {spec.revision} and {options.revision}")
        revision = spec.revision or options.revision or "main"
        resolved = await self.hub.resolve(spec.repo_id, revision)
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
        elif options.include and not (spec.quant or options.quant):
            chosen = _excluded(
                _included(resolved, options.include, set()), options.exclude, resolved.repo_id
            )
            name = spec.repo_id
        else:
            chosen, quant_name = _choose_model_files(resolved, spec.quant or options.quant)
            chosen = _excluded(chosen, options.exclude, resolved.repo_id)
            name = f"{spec.repo_id}:{quant_name}" if quant_name else spec.repo_id
        if resolved.gated:
            await self._check_gate(resolved, chosen[0])
        extras: list[RepoFileEntry] = []
        if spec.path is not None or quant_name is not None:
            extras = _included(resolved, options.include, {e.path for e in chosen})
            extras = [e for e in extras if not _matches(e.path, options.exclude)]
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
            url=self.hub.resolve_url(resolved.repo_id, resolved.commit, entry.path),
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
        import aiohttp

        hub = self.hub
        url = hub.resolve_url(resolved.repo_id, resolved.commit, entry.path)
        headers = {}
        if hub.config.token:
            headers["Authorization"] = f"Bearer {hub.config.token}"
        try:
            await self._holds.wait(host_key(url))
            async with self._api()[0].head(
                url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=HEAD_SECONDS),
            ) as resp:
                status, code = resp.status, resp.headers.get("X-Error-Code")
                hold_if_asked(self._holds, url, status, resp.headers, "the Hub's gated check")
        except (aiohttp.ClientError, TimeoutError):
            return  # unknown: the transfer will find out and say so
        page = f"{hub.config.endpoint}/{resolved.repo_id}"
        if status == 403 and code == "GatedRepo":
            raise GatedError(
                f"{resolved.repo_id} is gated: accept its terms at {page}"
                + ("" if hub.config.token else " and set HF_TOKEN"),
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
        filename, size = await self._prober.probe(spec.url)
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


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    """A glob matches the path in the repo or its last part (`*.json` finds `sub/a.json`)."""
    base = PurePosixPath(path).name
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def _excluded(
    entries: list[RepoFileEntry], patterns: tuple[str, ...], repo_id: str
) -> list[RepoFileEntry]:
    """`entries` without those `--exclude` matches; refused if nothing is left to download."""
    kept = [e for e in entries if not _matches(e.path, patterns)]
    if not kept:
        raise SpecError(f"--exclude {' '.join(patterns)} leaves no file of {repo_id} to download")
    return kept


def _repo_dir(options: PlanOptions, repo_id: str) -> Path:
    if options.layout is Layout.PLAIN:
        owner, name = repo_id.split("/", 1)
        return options.models_dir / owner / name
    return options.models_dir / repo_folder_name(repo_id)
