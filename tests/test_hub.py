"""hub.py against the fake hub (and, for protocol edge cases, a scripted loopback server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from modelfetch.core.errors import (
    AuthRequiredError,
    GatedError,
    HTTPStatusError,
    ModelfetchError,
    NetworkError,
    NotFoundError,
    RateLimitedError,
    ServerBusyError,
    SpecError,
    TooManyRedirectsError,
)
from modelfetch.hub import HubClient, HubConfig, RepoFileEntry, hub_config_from_env
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

REPO = "acme/tiny-GGUF"
TOKEN = "hf_supersecret_token_value"
KiB = 1 << 10


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@dataclass
class Sleeps:
    """Stands in for asyncio.sleep: records what the client asked to wait, waits for nothing."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_client(
    session: aiohttp.ClientSession, endpoint: str, token: str | None = None
) -> tuple[HubClient, Sleeps]:
    sleeps = Sleeps()
    return HubClient(session, HubConfig(endpoint, token), sleep=sleeps), sleeps


def assert_no_token(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), repr(exc.args)):
        assert TOKEN not in text


# --- resolve, pinning, listing -------------------------------------------------------------------


async def test_resolve_pins_the_commit(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    first = hub.add_repo(
        REPO,
        [
            RepoFile("model-Q4_K_M.gguf", size=64 * KiB, seed=1),
            RepoFile("config.json", content=b"1"),
        ],
    )
    client, _ = make_client(session, hub.endpoint)
    resolved = await client.resolve(REPO)
    assert (resolved.repo_id, resolved.revision, resolved.commit) == (REPO, "main", first)
    # The tree was listed at the sha, not at "main".
    trees = hub.requests(origin="hub", path_contains="/tree/")
    assert trees and all(f"/tree/{first}" in r.path for r in trees)

    second = hub.commit(
        REPO,
        [RepoFile("model-Q8_0.gguf", size=64 * KiB, seed=2), RepoFile("config.json", content=b"2")],
    )
    assert second != first
    assert await client.revision_sha(REPO) == second

    url = client.resolve_url(REPO, resolved.commit, "config.json")
    assert url == f"{hub.endpoint}/{REPO}/resolve/{first}/config.json"
    async with session.get(url) as resp:
        assert await resp.read() == b"1"  # the old commit's content, although main moved

    old_paths = [f.path for f in await client.list_files(REPO, first)]
    assert old_paths == ["config.json", "model-Q4_K_M.gguf"]
    new_paths = [f.path for f in await client.list_files(REPO, second)]
    assert new_paths == ["config.json", "model-Q4_K_M.gguf", "model-Q8_0.gguf"]


async def test_resolve_a_branch_and_a_sha(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    first = hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)])
    v1 = hub.commit(REPO, [RepoFile("b.gguf", size=KiB)], branch="v1")
    client, _ = make_client(session, hub.endpoint)
    on_branch = await client.resolve(REPO, "v1")
    assert on_branch.commit == v1 and on_branch.revision == "v1"
    assert [f.path for f in on_branch.files] == ["a.gguf", "b.gguf"]
    by_sha = await client.resolve(REPO, first)
    assert by_sha.commit == first
    assert [f.path for f in by_sha.files] == ["a.gguf"]


async def test_pagination_lists_every_file_once(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    paths = [f"f{i:02d}.txt" for i in range(7)] + ["d/e/deep.gguf", "d/mid.gguf"]
    hub.add_repo(REPO, [RepoFile(p, content=p.encode()) for p in paths])
    hub.page_size = 2
    client, _ = make_client(session, hub.endpoint)
    files = (await client.resolve(REPO)).files
    assert [f.path for f in files] == sorted(paths)
    pages = hub.requests(origin="hub", path_contains="/tree/")
    # 9 files + 2 directories ("d", "d/e") at 2 per page.
    assert len(pages) == 6
    assert all("recursive=true" in r.query for r in pages)


async def test_nested_paths_and_no_directories(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    hub.add_repo(
        REPO,
        [
            RepoFile("Q8_0/m-Q8_0-00001-of-00002.gguf", size=KiB),
            RepoFile("Q8_0/m-Q8_0-00002-of-00002.gguf", size=KiB),
            RepoFile("a/b/c/d/notes.md", content=b"hi"),
            RepoFile("README.md", content=b"# tiny"),
        ],
    )
    client, _ = make_client(session, hub.endpoint)
    files = await client.list_files(REPO, await client.revision_sha(REPO))
    assert [f.path for f in files] == [
        "Q8_0/m-Q8_0-00001-of-00002.gguf",
        "Q8_0/m-Q8_0-00002-of-00002.gguf",
        "README.md",
        "a/b/c/d/notes.md",
    ]


async def test_lfs_and_small_file_entries(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_repo(
        REPO,
        [
            RepoFile("model-Q4_K_M.gguf", size=96 * KiB, seed=7),
            RepoFile("config.json", content=b"{}"),
        ],
    )
    client, _ = make_client(session, hub.endpoint)
    resolved = await client.resolve(REPO)
    gguf, config = resolved.find("model-Q4_K_M.gguf"), resolved.find("config.json")
    assert resolved.find("missing.bin") is None
    lfs_info = hub.file(REPO, "model-Q4_K_M.gguf")
    small_info = hub.file(REPO, "config.json")
    assert gguf == RepoFileEntry(
        "model-Q4_K_M.gguf", 96 * KiB, lfs_info.sha256, lfs_info.git_oid, lfs=True
    )
    assert config == RepoFileEntry("config.json", 2, None, small_info.git_oid, lfs=False)


async def test_quants_lists_groups_with_sizes_and_shards(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    hub.add_repo(
        REPO,
        [
            RepoFile("tiny-Q4_K_M.gguf", size=40 * KiB),
            *(RepoFile(f"Q8_0/tiny-Q8_0-0000{i}-of-00003.gguf", size=30 * KiB) for i in (1, 2, 3)),
            RepoFile("UD-Q4_K_M/tiny-UD-Q4_K_M.gguf", size=45 * KiB),
            RepoFile("mmproj-F16.gguf", size=8 * KiB),
            RepoFile("README.md", content=b"x"),
        ],
    )
    client, _ = make_client(session, hub.endpoint)
    groups = await client.quants(REPO)
    assert [g.describe() for g in groups] == [
        "Q4_K_M (40.0 KiB, 1 file)",
        "Q8_0 (90.0 KiB, 3 shards)",
        "UD-Q4_K_M (45.0 KiB, 1 file)",
    ]
    q8 = groups[1]
    assert q8.paths[0] == "Q8_0/tiny-Q8_0-00001-of-00003.gguf" and q8.complete


# --- access: private, gated, missing -------------------------------------------------------------


async def test_private_repo_needs_a_token(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    sha = hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)], private=True)
    anonymous, sleeps = make_client(session, hub.endpoint)
    with pytest.raises(AuthRequiredError) as info:
        await anonymous.resolve(REPO)
    assert str(info.value).startswith(
        f"{REPO} needs a token: set HF_TOKEN or run huggingface-cli login"
    )
    assert info.value.status == 401 and sleeps.delays == []  # a 4xx is never retried

    wrong, _ = make_client(session, hub.endpoint, TOKEN)
    with pytest.raises(AuthRequiredError, match="refused the token") as info:
        await wrong.resolve(REPO)
    assert_no_token(info.value)

    hub.tokens.add(TOKEN)
    resolved = await wrong.resolve(REPO)
    assert resolved.commit == sha and [f.path for f in resolved.files] == ["a.gguf"]


async def test_gated_repo_lists_but_reports_gated(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    """Like the real Hub, a gated repo's metadata is public; its files are not."""
    hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)], gated=True)
    hub.tokens.add(TOKEN)
    client, _ = make_client(session, hub.endpoint, TOKEN)
    resolved = await client.resolve(REPO)
    assert resolved.gated and [f.path for f in resolved.files] == ["a.gguf"]
    url = client.resolve_url(REPO, resolved.commit, "a.gguf")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(url, headers=auth, allow_redirects=False) as resp:
        assert resp.status == 403 and resp.headers["X-Error-Code"] == "GatedRepo"
    hub.grant(REPO, TOKEN)
    async with session.get(url, headers=auth, allow_redirects=False) as resp:
        assert resp.status == 302
    plain = hub.add_repo("acme/open", [RepoFile("a.gguf", size=KiB)])
    assert not (await client.resolve("acme/open", plain)).gated


async def test_unknown_repo_and_revision(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)])
    client, sleeps = make_client(session, hub.endpoint)
    with pytest.raises(NotFoundError) as info:
        await client.resolve("nobody/nothing")
    assert str(info.value) == (
        f"repository nobody/nothing not found on {hub.endpoint} (or it is private: set HF_TOKEN)"
    )
    assert info.value.error_code == "RepoNotFound"
    with pytest.raises(NotFoundError) as info:
        await client.resolve(REPO, "no-such-branch")
    assert str(info.value) == f"revision no-such-branch not found in {REPO}"
    assert info.value.error_code == "RevisionNotFound"
    with pytest.raises(NotFoundError, match=f"revision {'0' * 40} not found"):
        await client.list_files(REPO, "0" * 40)
    assert sleeps.delays == []


async def test_an_invalid_repo_id_is_a_spec_error(session: aiohttp.ClientSession) -> None:
    client, _ = make_client(session, "http://127.0.0.1:9")
    with pytest.raises(SpecError, match="not a repo id"):
        await client.resolve("not-a-repo")


async def test_token_goes_to_the_hub(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_repo(REPO, [RepoFile(f"f{i}.gguf", size=KiB) for i in range(5)], private=True)
    hub.tokens.add(TOKEN)
    hub.page_size = 2
    client, _ = make_client(session, hub.endpoint, TOKEN)
    await client.resolve(REPO)
    assert len(hub.log) >= 4
    assert all(r.origin == "hub" and r.authorization for r in hub.log)
    hub.log.clear()
    anonymous, _ = make_client(session, hub.endpoint)
    hub.add_repo("acme/public", [RepoFile("a.gguf", size=KiB)])
    await anonymous.resolve("acme/public")
    assert hub.log and not any(r.authorization for r in hub.log)


# --- retries -------------------------------------------------------------------------------------


async def test_a_503_with_retry_after_is_retried(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    sha = hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)])
    hub.add_fault(Fault("status", origin="api", status=503, retry_after=3, times=1))
    client, sleeps = make_client(session, hub.endpoint)
    assert (await client.resolve(REPO)).commit == sha
    assert sleeps.delays == [3.0]
    statuses = [r.status for r in hub.requests(origin="hub", path_contains="/revision/")]
    assert statuses == [503, 200]


async def test_5xx_backs_off_then_gives_up(hub: FakeHub, session: aiohttp.ClientSession) -> None:
    hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)])
    hub.add_fault(Fault("status", origin="api", status=500))
    client, sleeps = make_client(session, hub.endpoint)
    with pytest.raises(HTTPStatusError) as info:
        await client.revision_sha(REPO)
    assert info.value.status == 500 and type(info.value) is HTTPStatusError
    assert sleeps.delays == [0.5, 1.0, 2.0]
    assert len(hub.requests(origin="hub")) == 4


async def test_a_long_retry_after_is_left_to_the_caller(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)])
    hub.add_fault(Fault("status", origin="api", status=429, retry_after=120, times=1))
    client, sleeps = make_client(session, hub.endpoint)
    with pytest.raises(RateLimitedError) as info:
        await client.revision_sha(REPO)
    assert info.value.retry_after == 120.0 and sleeps.delays == []
    # The host is held now: the same client asks nothing more of it before the 120 s are up,
    # and leaves that wait to its caller too.
    asked = len(hub.requests(origin="hub"))
    with pytest.raises(RateLimitedError, match=r"asked to wait 1[12][0-9] s more") as held:
        await client.revision_sha(REPO)
    assert held.value.retry_after is not None and 100 < held.value.retry_after <= 120
    assert len(hub.requests(origin="hub")) == asked and sleeps.delays == []
    hub.add_fault(Fault("status", origin="api", status=503, retry_after=31, times=1))
    other, other_sleeps = make_client(session, hub.endpoint)  # holds of its own
    with pytest.raises(ServerBusyError) as busy:
        await other.revision_sha(REPO)
    assert busy.value.retry_after == 31.0 and other_sleeps.delays == []


async def test_a_429_without_retry_after_is_not_retried(
    hub: FakeHub, session: aiohttp.ClientSession
) -> None:
    hub.add_repo(REPO, [RepoFile("a.gguf", size=KiB)])
    hub.add_fault(Fault("status", origin="api", status=429, times=1))
    client, sleeps = make_client(session, hub.endpoint)
    with pytest.raises(RateLimitedError):
        await client.revision_sha(REPO)
    assert sleeps.delays == []


async def test_network_errors_are_retried_then_raised(session: aiohttp.ClientSession) -> None:
    async with serve(lambda _r: _json([])) as (endpoint, _):
        pass  # the port is closed again now: connections are refused
    client, sleeps = make_client(session, endpoint, TOKEN)
    with pytest.raises(NetworkError, match="cannot reach") as info:
        await client.revision_sha(REPO)
    assert sleeps.delays == [0.5, 1.0, 2.0]
    assert_no_token(info.value)


# --- protocol edge cases, against a scripted server ----------------------------------------------


@dataclass
class Seen:
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # path, query, auth


@asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse] | web.StreamResponse],
) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def route(request: web.Request) -> web.StreamResponse:
        seen.requests.append(
            (request.path, request.query_string, "Authorization" in request.headers)
        )
        result = handler(request)
        return await result if isinstance(result, Awaitable) else result

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


SHA = "ab" * 20
OID = "cd" * 20
SHA256 = "EF" * 32


def _json(data: object, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _entry(path: str, lfs: bool = False) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "oid": OID, "size": 5, "path": path}
    if lfs:
        entry["lfs"] = {"oid": SHA256, "size": 5, "pointerSize": 134}
    return entry


async def test_a_gated_403_names_the_page(session: aiohttp.ClientSession) -> None:
    def handler(_r: web.Request) -> web.Response:
        return _json({"error": "gated"}, 403, **{"X-Error-Code": "GatedRepo"})

    async with serve(handler) as (endpoint, _):
        client, sleeps = make_client(session, endpoint)
        with pytest.raises(GatedError) as info:
            await client.resolve(REPO)
    assert (
        str(info.value)
        == f"{REPO} is gated: accept its terms at {endpoint}/{REPO}, then set HF_TOKEN"
    )
    assert info.value.error_code == "GatedRepo" and sleeps.delays == []


async def test_a_plain_403_is_auth_required(session: aiohttp.ClientSession) -> None:
    async with serve(lambda _r: _json({"error": "no"}, 403)) as (endpoint, _):
        client, _ = make_client(session, endpoint, TOKEN)
        with pytest.raises(AuthRequiredError, match="refused") as info:
            await client.resolve(REPO)
    assert_no_token(info.value)


async def test_the_token_is_not_sent_to_another_origin(session: aiohttp.ClientSession) -> None:
    async with serve(lambda _r: _json([_entry("second.gguf")])) as (other, other_seen):

        def first(request: web.Request) -> web.Response:
            if "/revision/" in request.path:
                return _json({"sha": SHA})
            link = f'<{other}/api/models/{REPO}/tree/{SHA}?cursor=2>; rel="next"'
            return _json([_entry("first.gguf")], Link=link)

        async with serve(first) as (endpoint, seen):
            client, _ = make_client(session, endpoint, TOKEN)
            files = (await client.resolve(REPO)).files
    assert [f.path for f in files] == ["first.gguf", "second.gguf"]
    assert [auth for _, _, auth in seen.requests] == [True, True]
    assert [auth for _, _, auth in other_seen.requests] == [False]


async def test_relative_next_links_and_redirects_are_followed(
    session: aiohttp.ClientSession,
) -> None:
    def handler(request: web.Request) -> web.Response:
        if request.path == "/api/models/old/name/revision/main":
            raise web.HTTPTemporaryRedirect(f"/api/models/{REPO}/revision/main")
        if "/revision/" in request.path:
            return _json({"sha": SHA})
        if request.query.get("cursor") == "2":
            return _json([_entry("b.gguf", lfs=True)])
        return _json([_entry("a.txt")], Link='<?recursive=true&cursor=2>; rel="next"')

    async with serve(handler) as (endpoint, seen):
        client, _ = make_client(session, endpoint, TOKEN)
        commit = await client.revision_sha("old/name")
        files = await client.list_files(REPO, commit)
    assert commit == SHA
    assert files == [
        RepoFileEntry("a.txt", 5, None, OID, lfs=False),
        RepoFileEntry("b.gguf", 5, SHA256.lower(), OID, lfs=True),
    ]
    assert all(auth for _, _, auth in seen.requests)  # same origin all along


async def test_a_redirect_loop_ends(session: aiohttp.ClientSession) -> None:
    def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path)

    async with serve(handler) as (endpoint, seen):
        client, _ = make_client(session, endpoint)
        with pytest.raises(TooManyRedirectsError):
            await client.revision_sha(REPO)
    assert len(seen.requests) == 6


@pytest.mark.parametrize(
    ("revision_body", "tree_body", "problem"),
    [
        ("<html>captive portal</html>", None, "not JSON"),
        ('{"id": "acme/tiny-GGUF"}', None, "no commit sha"),  # gglib would fall back to "main"
        (f'{{"sha": "{SHA[:12]}"}}', None, "no commit sha"),
        ('["a list"]', None, "expected a JSON object"),
        (None, '{"not": "a list"}', "expected a JSON list"),
        (None, '["x"]', "not an object"),
        (None, '[{"type": "file", "path": "a", "oid": "' + OID + '"}]', "no valid size"),
        (None, '[{"type": "file", "path": "a", "size": 1, "oid": "zz"}]', "no valid git oid"),
        (None, '[{"type": "file", "size": 1, "oid": "' + OID + '"}]', "no path"),
        (
            None,
            '[{"type": "file", "path": "a", "size": 1, "oid": "' + OID + '", "lfs": {"oid": 1}}]',
            "no valid LFS sha256",
        ),
    ],
)
async def test_malformed_answers_are_clear_network_errors(
    session: aiohttp.ClientSession, revision_body: str | None, tree_body: str | None, problem: str
) -> None:
    def handler(request: web.Request) -> web.Response:
        if "/revision/" in request.path:
            body = revision_body if revision_body is not None else f'{{"sha": "{SHA}"}}'
        else:
            body = tree_body or "[]"
        return web.Response(text=body, content_type="application/json")

    async with serve(handler) as (endpoint, _):
        client, sleeps = make_client(session, endpoint)
        with pytest.raises(NetworkError, match=problem) as info:
            await client.resolve(REPO)
    assert str(info.value).startswith(f"{endpoint} sent a malformed answer for ")
    assert sleeps.delays == []


async def test_a_path_listed_twice_is_an_error(session: aiohttp.ClientSession) -> None:
    def handler(request: web.Request) -> web.Response:
        if "/revision/" in request.path:
            return _json({"sha": SHA})
        if request.query.get("cursor"):
            return _json([_entry("dup.gguf")])
        return _json([_entry("dup.gguf")], Link='<?cursor=1>; rel="next"')

    async with serve(handler) as (endpoint, _):
        client, _ = make_client(session, endpoint)
        with pytest.raises(NetworkError, match=r"lists 'dup\.gguf' twice"):
            await client.resolve(REPO)


async def test_a_page_linking_to_itself_ends(session: aiohttp.ClientSession) -> None:
    def handler(request: web.Request) -> web.Response:
        if "/revision/" in request.path:
            return _json({"sha": SHA})
        return _json([], Link='<?recursive=true>; rel="next"')

    async with serve(handler) as (endpoint, _):
        client, _ = make_client(session, endpoint)
        with pytest.raises(NetworkError, match="link back"):
            await client.resolve(REPO)


async def test_resolve_url_quotes_the_path(session: aiohttp.ClientSession) -> None:
    client = HubClient(session, HubConfig("https://hf.example/", None))
    assert client.resolve_url(REPO, SHA, "dir/my model#1.gguf") == (
        f"https://hf.example/{REPO}/resolve/{SHA}/dir/my%20model%231.gguf"
    )
    assert client.resolve_url(REPO, "refs/pr/1", "a.gguf") == (
        f"https://hf.example/{REPO}/resolve/refs%2Fpr%2F1/a.gguf"
    )


# --- configuration -------------------------------------------------------------------------------


def test_hub_config_repr_masks_the_token() -> None:
    config = HubConfig("https://huggingface.co", TOKEN)
    assert TOKEN not in repr(config) and TOKEN not in str(config)
    assert repr(config) == "HubConfig(endpoint='https://huggingface.co', token=***)"
    credentials = config.credentials()
    assert credentials is not None and credentials.origin == "https://huggingface.co:443"
    assert TOKEN not in repr(credentials)
    assert HubConfig().credentials() is None
    with pytest.raises(ValueError):
        HubConfig("ftp://x")


def test_config_from_env_defaults(tmp_path: Path) -> None:
    config = hub_config_from_env({}, home=tmp_path)
    assert config == HubConfig("https://huggingface.co", None)


def test_config_from_env_token_file_under_hf_home(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text(f"  {TOKEN}\n")
    config = hub_config_from_env(
        {"HF_HOME": str(hf_home), "HF_ENDPOINT": "http://127.0.0.1:8123/"}, home=tmp_path
    )
    assert config.endpoint == "http://127.0.0.1:8123" and config.token == TOKEN


def test_config_from_env_precedence(tmp_path: Path) -> None:
    files = {}
    for name in ("path", "home", "xdg", "cache"):
        files[name] = tmp_path / name / "token"
    (tmp_path / "path").mkdir()
    files["path"].write_text("from-token-path")
    (tmp_path / "home").mkdir()
    files["home"].write_text("from-hf-home")
    (tmp_path / "xdg" / "huggingface").mkdir(parents=True)
    (tmp_path / "xdg" / "huggingface" / "token").write_text("from-xdg")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "token").write_text("from-default")

    env = {
        "HF_TOKEN": "from-env",
        "HUGGING_FACE_HUB_TOKEN": "from-legacy-env",
        "HF_TOKEN_PATH": str(files["path"]),
        "HF_HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }

    def token(**overrides: str) -> str | None:
        merged = {**env, **overrides}
        return hub_config_from_env({k: v for k, v in merged.items() if v}, home=tmp_path).token

    assert token() == "from-env"
    assert hub_config_from_env({**env, "HF_TOKEN": "  "}, home=tmp_path).token == "from-legacy-env"
    assert token(HF_TOKEN="") == "from-legacy-env"
    assert token(HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="") == "from-token-path"
    assert token(HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="", HF_TOKEN_PATH="") == "from-hf-home"
    assert token(HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="", HF_TOKEN_PATH="", HF_HOME="") == "from-xdg"
    assert (
        token(
            HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="", HF_TOKEN_PATH="", HF_HOME="", XDG_CACHE_HOME=""
        )
        == "from-default"
    )
    # An empty or missing token file is no token.
    files["path"].write_text("\n")
    assert token(HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="") is None
    assert (
        token(HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="", HF_TOKEN_PATH=str(tmp_path / "nope")) is None
    )
    # "~" in a path means `home`.
    assert (
        hub_config_from_env({"HF_TOKEN_PATH": "~/home/token"}, home=tmp_path).token
        == "from-hf-home"
    )


def test_config_from_env_rejects_a_bad_endpoint() -> None:
    with pytest.raises(SpecError, match="HF_ENDPOINT"):
        hub_config_from_env({"HF_ENDPOINT": "huggingface.co"})


async def test_no_error_message_carries_the_token(session: aiohttp.ClientSession) -> None:
    """Every error the client raises, across statuses, with a token configured."""
    raised: list[ModelfetchError] = []
    for status, code in [
        (401, None),
        (403, "GatedRepo"),
        (403, None),
        (404, "RepoNotFound"),
        (500, None),
    ]:
        headers = {"X-Error-Code": code} if code else {}

        def reply(_r: web.Request, s: int = status, h: dict[str, str] = headers) -> web.Response:
            return _json({"error": "x"}, s, **h)

        async with serve(reply) as (endpoint, _):
            client, _ = make_client(session, endpoint, TOKEN)
            with pytest.raises(ModelfetchError) as info:
                await client.resolve(REPO)
            raised.append(info.value)
    assert len(raised) == 5
    for exc in raised:
        assert_no_token(exc)
        assert TOKEN not in str(getattr(exc, "url", ""))
