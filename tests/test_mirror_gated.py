"""Gated and private repos through the mirror: answered only when the client's own token is
accepted upstream; a refused client sees the Hub's error, so huggingface_hub raises its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from modelfetch.testing.fakehub import FakeHub, RepoFile
from tests.mirror_env import (
    hf_env_fixture,  # noqa: F401 -- autouse
    in_thread,
    running_mirror,
)

GATED = "corp/gated-GGUF"
PRIVATE = "corp/private-GGUF"
FILE = "model-Q4_K_M.gguf"
ALICE = "hf_alice_granted"
BOB = "hf_bob_not_granted"
MIRROR_TOKEN = "hf_mirror_own"


def _repos(hub: FakeHub) -> None:
    hub.add_repo(GATED, [RepoFile(FILE, size=1 << 20, seed=1)], gated=True)
    hub.add_repo(PRIVATE, [RepoFile(FILE, size=1 << 20, seed=2)], private=True)
    hub.grant(GATED, ALICE)
    hub.grant(GATED, MIRROR_TOKEN)
    hub.tokens.add(BOB)


def _download(endpoint: str, cache: Path, repo: str, token: str | bool) -> str:
    return hf_hub_download(repo, FILE, endpoint=endpoint, cache_dir=cache, token=token)


@pytest.mark.parametrize("mirror_token", [None, MIRROR_TOKEN], ids=["no-own-token", "own-token"])
async def test_a_gated_repo_needs_the_clients_own_grant(
    hub: FakeHub, tmp_path: Path, mirror_token: str | None
) -> None:
    _repos(hub)
    expected = hub.content(GATED, FILE)
    async with running_mirror(hub, tmp_path / "mirror", token=mirror_token) as mirror:
        for who in (False, BOB):
            with pytest.raises(GatedRepoError):
                await in_thread(_download, mirror.endpoint, tmp_path / f"c-{who}", GATED, who)
        got = await in_thread(_download, mirror.endpoint, tmp_path / "c-alice", GATED, ALICE)
        assert Path(got).read_bytes() == expected
        # Now the mirror holds it; still not handed out on the mirror's authority.
        for who in (False, BOB):
            with pytest.raises(GatedRepoError):
                await in_thread(_download, mirror.endpoint, tmp_path / f"d-{who}", GATED, who)
        # Its listing is public on the Hub, and so it is here.
        info = await in_thread(HfApi(endpoint=mirror.endpoint).model_info, GATED, token=False)
        assert info.gated == "manual"
    fetches = [r for r in hub.requests("hub", path_contains=f"{GATED}/resolve/", method="GET")]
    assert len(fetches) == 1  # fetched once, with a token the Hub accepted
    assert fetches[0].authorization and fetches[0].status < 400


async def test_a_private_repo_is_not_found_without_a_token_that_sees_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    _repos(hub)
    async with running_mirror(hub, tmp_path / "mirror", token=MIRROR_TOKEN) as mirror:
        api = HfApi(endpoint=mirror.endpoint)
        with pytest.raises(RepositoryNotFoundError):
            await in_thread(api.model_info, PRIVATE, token=False)
        with pytest.raises(RepositoryNotFoundError):
            await in_thread(_download, mirror.endpoint, tmp_path / "c0", PRIVATE, False)
        got = await in_thread(_download, mirror.endpoint, tmp_path / "c1", PRIVATE, BOB)
        assert Path(got).read_bytes() == hub.content(PRIVATE, FILE)
        with pytest.raises(RepositoryNotFoundError):  # held now, and still not for outsiders
            await in_thread(_download, mirror.endpoint, tmp_path / "c2", PRIVATE, False)


async def test_the_clients_token_goes_to_the_upstream_only_and_is_not_kept(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    _repos(hub)
    home = tmp_path / "mirror"
    async with running_mirror(hub, home) as mirror:
        await in_thread(_download, mirror.endpoint, tmp_path / "c", GATED, ALICE)
        with pytest.raises(GatedRepoError):
            await in_thread(_download, mirror.endpoint, tmp_path / "d", GATED, BOB)
        views = [v.to_dict() for v in await mirror.manager.snapshot()]
    assert ALICE not in repr(views)
    assert ALICE not in caplog.text and BOB not in caplog.text  # never logged
    # Sent to the upstream's origin and nowhere else: the CDN saw no Authorization.
    assert all(not r.authorization for r in hub.requests("cdn"))
    for path in home.rglob("*"):
        if path.is_file() and path.stat().st_size < (1 << 20):
            assert ALICE.encode() not in path.read_bytes(), path


async def test_with_the_upstream_stopped_a_gated_file_goes_only_to_a_token_it_accepted(
    hub: FakeHub, tmp_path: Path
) -> None:
    import aiohttp

    _repos(hub)
    expected = hub.content(GATED, FILE)
    async with running_mirror(hub, tmp_path / "mirror") as mirror:
        # Anyone may read a gated repo's listing; that must not make its files public.
        await in_thread(HfApi(endpoint=mirror.endpoint).model_info, GATED, token=False)
        await in_thread(_download, mirror.endpoint, tmp_path / "a", GATED, ALICE)
        await hub.close()
        url = f"{mirror.endpoint}/{GATED}/resolve/main/{FILE}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 504  # no upstream to ask, and nobody vouched for "anyone"
            async with http.get(url, headers={"Authorization": f"Bearer {BOB}"}) as r:
                assert r.status == 504
            async with http.get(url, headers={"Authorization": f"Bearer {ALICE}"}) as r:
                assert r.status == 200
                assert await r.read() == expected
