"""Revisions through the mirror: a branch is pinned upstream with a short cache, a commit is
served from what is held, and with the upstream stopped what is held is still served."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from modelfetch.mirror import MirrorOptions
from modelfetch.testing.fakehub import FakeHub, RepoFile
from tests.mirror_env import (
    hf_env_fixture,  # noqa: F401 -- autouse
    in_thread,
    running_mirror,
)

REPO = "team/model-GGUF"
GGUF = "model-Q4_K_M.gguf"


def _revision_asks(hub: FakeHub) -> int:
    return len(hub.requests("hub", path_contains=f"/api/models/{REPO}/revision/main"))


async def test_a_branch_is_pinned_upstream_and_cached_briefly(hub: FakeHub, tmp_path: Path) -> None:
    first = hub.add_repo(REPO, [RepoFile("README.md", content=b"one\n")])
    async with (
        running_mirror(hub, tmp_path / "m1", options=MirrorOptions(branch_ttl=3600)) as mirror,
        aiohttp.ClientSession() as http,
    ):
        url = f"{mirror.endpoint}/{REPO}/resolve/main/README.md"
        async with http.head(url) as r:
            assert r.headers["X-Repo-Commit"] == first
        asks = _revision_asks(hub)
        second = hub.commit(REPO, [RepoFile("README.md", content=b"two\n")])
        async with http.get(url) as r:  # within the cache: still the commit it was pinned at
            assert r.headers["X-Repo-Commit"] == first
            assert await r.read() == b"one\n"
        assert _revision_asks(hub) == asks
        # The old commit stays reachable by its sha, the new one too.
        async with http.get(f"{mirror.endpoint}/{REPO}/resolve/{second}/README.md") as r:
            assert await r.read() == b"two\n"
    async with (
        running_mirror(hub, tmp_path / "m2", options=MirrorOptions(branch_ttl=0)) as mirror,
        aiohttp.ClientSession() as http,
        http.head(f"{mirror.endpoint}/{REPO}/resolve/main/README.md") as r,
    ):
        assert r.headers["X-Repo-Commit"] == second


async def test_with_the_upstream_stopped_held_files_are_still_served(
    hub: FakeHub, tmp_path: Path
) -> None:
    content = hub.add_repo(
        REPO, [RepoFile(GGUF, size=2 << 20, seed=5), RepoFile("README.md", content=b"hi\n")]
    )
    commit = content
    expected = hub.content(REPO, GGUF)
    async with running_mirror(hub, tmp_path / "mirror") as mirror:
        # Held through an ordinary download of this host's queue (not through the mirror).
        gid = await mirror.manager.add(f"{REPO}:Q4_K_M", include=["README.md"])
        await mirror.manager.wait([gid])
        assert (await mirror.manager.group_view(gid)).status == "completed"
        # Served once while the upstream could say who may read it: anyone, without a token.
        async with (
            aiohttp.ClientSession() as http,
            http.head(f"{mirror.endpoint}/{REPO}/resolve/main/README.md") as r,
        ):
            assert r.status == 200
    endpoint = hub.endpoint
    await hub.close()  # the upstream is gone from here on
    # A new daemon on the same home: nothing in memory, only the queue and the cache dir.
    async with running_mirror(hub, tmp_path / "mirror", endpoint=endpoint) as mirror:
        api = HfApi(endpoint=mirror.endpoint)
        info = await in_thread(api.model_info, REPO, files_metadata=True)
        assert info.sha == commit
        assert {s.rfilename for s in info.siblings or []} == {GGUF, "README.md"}
        got = await in_thread(
            hf_hub_download, REPO, GGUF, endpoint=mirror.endpoint, cache_dir=tmp_path / "c"
        )
        assert Path(got).read_bytes() == expected
        assert f"/snapshots/{commit}/" in got
        folder = await in_thread(
            snapshot_download, REPO, endpoint=mirror.endpoint, cache_dir=tmp_path / "s"
        )
        assert (Path(folder) / "README.md").read_bytes() == b"hi\n"
        async with aiohttp.ClientSession() as http:
            url = f"{mirror.endpoint}/{REPO}/resolve/{commit}/{GGUF}"
            async with http.get(url, headers={"Range": "bytes=10-19"}) as r:
                assert r.status == 206
                assert await r.read() == expected[10:20]
            # What it does not hold it cannot fetch: the Hub's way of saying "not now".
            async with http.head(f"{mirror.endpoint}/other/repo/resolve/main/x.gguf") as r:
                assert r.status == 504
