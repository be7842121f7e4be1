"""The mirror's path handling against hostile input: nothing outside the Hub's names is looked
up, nothing is queued, nothing is asked upstream, and no byte of any other file is served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelfetch.mirror import names
from modelfetch.testing.fakehub import FakeHub, RepoFile
from tests.mirror_env import running_mirror

REPO = "team/model"


async def _raw(endpoint: str, target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """Send exactly this request target (no client library normalises it) and read the reply."""
    host, port = endpoint.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            method + b" " + target + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
            + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return status, reply


HOSTILE = [
    b"/team/model/resolve/main/../../../etc/passwd",
    b"/team/model/resolve/main/..%2F..%2F..%2Fetc%2Fpasswd",
    b"/team/model/resolve/main/%2Fetc%2Fpasswd",
    b"/team/model/resolve/main//etc/passwd",
    b"/team/model/resolve/main/a/%2E%2E/%2E%2E/secret",
    b"/team/model/resolve/main/README.md%00.txt",
    b"/team/model/resolve/main/a%5C..%5C..%5Csecret",
    b"/team/model/resolve/main/C:%5Cwindows",
    b"/team/model/resolve/main/" + b"a" * 300,
    b"/team/model/resolve/main/" + b"d/" * 600 + b"f",
    b"/team/model/resolve/..%2F..%2Fx/README.md",
    b"/team/model/resolve/main%00/README.md",
    b"/team/..%2Fmodel/resolve/main/README.md",
    b"/../../etc/resolve/main/passwd",
    b"/api/models/team/..%2F..%2Fetc",
    b"/api/models/team/model/tree/main/..%2F..",
    b"/api/models/team/model/revision/..%2F..%2Fmain",
    b"/team/model/resolve/main/caf%65%CC%81",  # "café" not NFC (e + combining accent)
]


@pytest.mark.parametrize("target", HOSTILE, ids=lambda t: t.decode()[:60])
async def test_hostile_targets_are_refused_without_side_effects(
    hub: FakeHub, tmp_path: Path, target: bytes
) -> None:
    hub.add_repo(REPO, [RepoFile("README.md", content=b"hello\n")])
    secret = tmp_path / "mirror" / "secret"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"SECRET")
    async with running_mirror(hub, tmp_path / "mirror") as mirror:
        before = len(hub.log)
        for method in (b"GET", b"HEAD"):
            status, reply = await _raw(mirror.endpoint, target, method)
            assert status in (400, 404), reply[:200]
            assert b"SECRET" not in reply and b"root:" not in reply
        assert await mirror.manager.snapshot() == []
        assert len(hub.log) == before  # refused before anything reached the upstream


async def test_write_methods_and_other_paths_are_not_answered_by_the_public_side(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_repo(REPO, [RepoFile("README.md", content=b"hello\n")])
    async with running_mirror(hub, tmp_path / "mirror", public=True) as mirror:
        assert mirror.public_endpoint is not None
        ok, _ = await _raw(mirror.public_endpoint, b"/team/model/resolve/main/README.md")
        assert ok == 200
        for method, target in [
            (b"GET", b"/"),
            (b"GET", b"/api/downloads"),
            (b"GET", b"/api/health"),
            (b"POST", b"/api/downloads"),
            (b"DELETE", b"/api/downloads/1"),
            (b"PUT", b"/team/model/resolve/main/README.md"),
            (b"DELETE", b"/team/model/resolve/main/README.md"),
            (b"POST", b"/team/model/resolve/main/README.md"),
            (b"GET", b"/static/app.js"),
        ]:
            status, _ = await _raw(mirror.public_endpoint, target, method)
            assert status in (404, 405), (method, target, status)


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "a/../b", "a//b", "a\\b", "nul\x00", "x" * 256, "a/" * 600 + "b", "e\u0301"],
)
def test_file_names_a_file_system_would_misread_are_refused(bad: str) -> None:
    with pytest.raises(names.BadName):
        names.file_path(bad)


@pytest.mark.parametrize("bad", ["", "..", "a/../b", "/main", "main/", "x" * 300, "ma in", "m\x00"])
def test_revisions_outside_git_ref_names_are_refused(bad: str) -> None:
    with pytest.raises(names.BadName):
        names.revision(bad)


def test_ordinary_names_pass_unchanged() -> None:
    assert (
        names.file_path("sub/dir/model-00001-of-00002.gguf") == "sub/dir/model-00001-of-00002.gguf"
    )
    assert names.revision("refs/pr/1") == "refs/pr/1"
    assert names.revision("v1.0-rc.2") == "v1.0-rc.2"
    assert names.repo_id("unsloth", "Qwen3-8B-GGUF") == "unsloth/Qwen3-8B-GGUF"
