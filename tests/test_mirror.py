"""The mirror's read side and pull-through, with huggingface_hub itself as the client."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from modelfetch.testing.fakehub import FakeHub, RepoFile
from tests.mirror_env import (
    hf_env_fixture,  # noqa: F401 -- autouse
    in_thread,
    running_mirror,
)

REPO = "team/model-GGUF"
BIG = "model-Q4_K_M.gguf"
SIZE = 3 << 20


def _add_repo(hub: FakeHub) -> str:
    return hub.add_repo(
        REPO,
        [
            RepoFile(BIG, size=SIZE, seed=7),
            RepoFile("README.md", content=b"# a model\n"),
            RepoFile("sub/config.json", content=b'{"a": 1}\n'),
        ],
    )


def _cdn_bytes(hub: FakeHub, path: str) -> int:
    return sum(r.bytes_sent for r in hub.requests("cdn", path_contains=path))


async def test_hf_hub_download_pulls_through_and_is_byte_exact(
    hub: FakeHub, tmp_path: Path
) -> None:
    commit = _add_repo(hub)
    async with running_mirror(hub, tmp_path / "mirror-home") as mirror:
        got = await in_thread(
            hf_hub_download, REPO, BIG, endpoint=mirror.endpoint, cache_dir=tmp_path / "c1"
        )
        assert Path(got).read_bytes() == hub.content(REPO, BIG)
        assert f"/snapshots/{commit}/" in got
        small = await in_thread(
            hf_hub_download, REPO, "README.md", endpoint=mirror.endpoint, cache_dir=tmp_path / "c1"
        )
        assert Path(small).read_bytes() == b"# a model\n"
        # The download shows on the mirror's own queue, completed and verified.
        views = await mirror.manager.snapshot()
        names = {v.name: v for v in views}
        assert names[f"{REPO}/{BIG}"].status == "completed"
        assert names[f"{REPO}/{BIG}"].files[0].verified
    assert _cdn_bytes(hub, BIG) == SIZE


async def test_snapshot_download_and_repo_info_through_the_mirror(
    hub: FakeHub, tmp_path: Path
) -> None:
    commit = _add_repo(hub)
    async with running_mirror(hub, tmp_path / "mirror-home") as mirror:
        api = HfApi(endpoint=mirror.endpoint)
        info = await in_thread(api.model_info, REPO, files_metadata=True)
        assert info.sha == commit
        by_name = {s.rfilename: s for s in info.siblings or []}
        assert set(by_name) == {BIG, "README.md", "sub/config.json"}
        hub_info = hub.file(REPO, BIG)
        assert by_name[BIG].size == SIZE
        assert by_name[BIG].lfs is not None and by_name[BIG].lfs.sha256 == hub_info.sha256
        assert by_name[BIG].blob_id == hub_info.git_oid  # the pointer's blob, as the Hub says
        folder = await in_thread(
            snapshot_download, REPO, endpoint=mirror.endpoint, cache_dir=tmp_path / "c2"
        )
        for path in (BIG, "README.md", "sub/config.json"):
            assert (Path(folder) / path).read_bytes() == hub.content(REPO, path)
        entries = await in_thread(api.get_paths_info, REPO, ["sub", "README.md", "nope"])
        assert sorted(e.path for e in entries) == ["README.md", "sub"]


async def test_resolve_headers_are_what_huggingface_hub_reads(hub: FakeHub, tmp_path: Path) -> None:
    commit = _add_repo(hub)
    info = hub.file(REPO, BIG)
    small = hub.file(REPO, "README.md")
    async with (
        running_mirror(hub, tmp_path / "mirror-home") as mirror,
        aiohttp.ClientSession() as http,
    ):
        url = f"{mirror.endpoint}/{REPO}/resolve/main/{BIG}"
        async with http.head(url, allow_redirects=False) as r:
            assert r.status == 200
            assert r.headers["X-Repo-Commit"] == commit
            assert r.headers["X-Linked-Etag"] == f'"{info.sha256}"'
            assert r.headers["ETag"] == f'"{info.sha256}"'
            assert r.headers["X-Linked-Size"] == str(SIZE)
            assert r.headers["Content-Length"] == str(SIZE)
            assert r.headers["Accept-Ranges"] == "bytes"
        async with http.head(f"{mirror.endpoint}/{REPO}/resolve/main/README.md") as r:
            assert r.headers["ETag"] == f'"{small.git_oid}"'
            assert "X-Linked-Etag" not in r.headers
            assert r.headers["Content-Length"] == str(small.size)
        async with http.get(url, headers={"Range": "bytes=100-199"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 100-199/{SIZE}"
            assert await r.read() == hub.content(REPO, BIG, start=100, end=200)
        async with http.get(url, headers={"Range": "bytes=-10"}) as r:
            assert r.status == 206
            assert await r.read() == hub.content(REPO, BIG, start=SIZE - 10)
        async with http.get(url, headers={"Range": f"bytes={SIZE}-"}) as r:
            assert r.status == 416
            assert r.headers["Content-Range"] == f"bytes */{SIZE}"
        async with http.get(url, headers={"Range": "bytes=5-1"}) as r:  # invalid: ignored
            assert r.status == 200
            assert hashlib.sha256(await r.read()).hexdigest() == info.sha256
        async with http.head(f"{mirror.endpoint}/{REPO}/resolve/main/missing.bin") as r:
            assert r.status == 404
            assert r.headers["X-Error-Code"] == "EntryNotFound"
            assert r.headers["X-Repo-Commit"] == commit
        # A missing file or commit is about that file or commit: the repo stays readable.
        async with http.head(f"{mirror.endpoint}/{REPO}/resolve/main/README.md") as r:
            assert r.status == 200
        async with http.head(f"{mirror.endpoint}/{REPO}/resolve/{'0' * 40}/README.md") as r:
            assert r.status == 404
            assert r.headers["X-Error-Code"] == "RevisionNotFound"
        async with http.head(f"{mirror.endpoint}/{REPO}/resolve/{commit}/README.md") as r:
            assert r.status == 200
        async with http.get(f"{mirror.endpoint}/api/models/{REPO}/revision/nope") as r:
            assert r.status == 404
            assert r.headers["X-Error-Code"] == "RevisionNotFound"
        async with http.get(f"{mirror.endpoint}/api/models/team/absent") as r:
            assert r.status in (401, 404)
            assert r.headers["X-Error-Code"] == "RepoNotFound"


async def test_the_daemons_token_does_not_guard_the_mirror_but_its_api_stays_guarded(
    hub: FakeHub, tmp_path: Path
) -> None:
    _add_repo(hub)
    async with (
        running_mirror(hub, tmp_path / "m", daemon_token="daemon-secret") as mirror,
        aiohttp.ClientSession() as http,
    ):
        # A Hub client sends its Hub token (or none), never the daemon's.
        async with http.head(
            f"{mirror.endpoint}/{REPO}/resolve/main/README.md",
            headers={"Authorization": "Bearer not-the-daemon-token"},
        ) as r:
            assert r.status == 401  # the upstream's answer to a token it does not know
        async with http.head(f"{mirror.endpoint}/{REPO}/resolve/main/README.md") as r:
            assert r.status == 200
        async with http.get(f"{mirror.endpoint}/api/downloads") as r:
            assert r.status == 401  # the control API still wants the daemon's token
        async with http.get(
            f"{mirror.endpoint}/api/downloads", headers={"Authorization": "Bearer daemon-secret"}
        ) as r:
            assert r.status == 200


def _lan_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_at_a_daemon_open_to_the_network_the_mirror_answers_this_machine_only(
    hub: FakeHub, tmp_path: Path
) -> None:
    """`--host 0.0.0.0 --token T --mirror`: the Hub paths at the daemon's origin are not on
    the network by that side effect; only `--mirror-host`'s listener opens them."""
    lan = _lan_address()
    if lan is None:
        pytest.skip("no non-loopback address to reach the daemon from")
    from modelfetch.mirror import make_state, mount
    from modelfetch.mirror.app import MirrorOptions
    from modelfetch.server.app import create_app
    from modelfetch.server.state import STATE
    from tests.mirror_env import _start

    _add_repo(hub)
    async with running_mirror(hub, tmp_path / "m") as mirror:
        app = create_app(mirror.manager, token="daemon-secret", host="0.0.0.0")
        app[STATE].config.open_routes.update(
            mount(app, make_state(mirror.manager, MirrorOptions()))
        )
        runner, port = await _start(app, "0.0.0.0")
        app[STATE].config.port = port
        try:
            async with aiohttp.ClientSession() as http:
                for host, expected in ((lan, 403), ("127.0.0.1", 200)):
                    url = f"http://{host}:{port}/{REPO}/resolve/main/README.md"
                    async with http.head(url) as r:
                        assert r.status == expected, host
        finally:
            await runner.cleanup()


async def test_hf_download_command_through_the_mirror(hub: FakeHub, tmp_path: Path) -> None:
    """`hf download` (huggingface_hub's CLI): a whole repo with --include, and one file."""
    import asyncio
    import os
    import sys

    _add_repo(hub)
    hf = Path(sys.executable).with_name("hf")
    if not hf.exists():
        pytest.skip("the hf command is not installed")
    async with running_mirror(hub, tmp_path / "mirror-home") as mirror:
        env = {**os.environ, "HF_ENDPOINT": mirror.endpoint, "HF_HUB_DISABLE_XET": "1"}
        for args in (
            [REPO, "--include", "sub/*", "--local-dir", str(tmp_path / "out")],
            [REPO, BIG, "--local-dir", str(tmp_path / "out")],
        ):
            proc = await asyncio.create_subprocess_exec(
                str(hf), "download", *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]
    assert (tmp_path / "out" / "sub" / "config.json").read_bytes() == b'{"a": 1}\n'
    assert (tmp_path / "out" / BIG).read_bytes() == hub.content(REPO, BIG)
    assert not (tmp_path / "out" / "README.md").exists()  # --include kept to what it names
