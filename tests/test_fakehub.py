"""The fake Hub against its contract (docs/dev/fakehub-api.md), over real loopback sockets, and
against huggingface_hub as an independent client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile as HfRepoFile

from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

REPO = "acme/tiny"
LFS = "model-Q4_K_M.gguf"
LFS_SIZE = 3 * (1 << 20) + 17  # crosses the generator's 1 MiB block boundary several times
SMALL = "config.json"
CONFIG = b'{"a": 1}\n'
SHARD1 = "sub/dir/model-Q8_0-00001-of-00002.gguf"
SHARD2 = "sub/dir/model-Q8_0-00002-of-00002.gguf"
NOTES = "sub/notes.txt"
TREE_FILES = {LFS, SMALL, SHARD1, SHARD2, NOTES, "README.md"}
TREE_DIRS = {"sub", "sub/dir"}
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def repo_files(seed: int = 1) -> list[RepoFile]:
    return [
        RepoFile(LFS, size=LFS_SIZE, seed=seed),
        RepoFile(SMALL, content=CONFIG),
        RepoFile(SHARD1, size=100_000, seed=11),
        RepoFile(SHARD2, size=50_001, seed=12),
        RepoFile(NOTES, content=b"notes\n"),
        RepoFile("README.md", content=b"# tiny\n"),
    ]


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as hub:
        hub.add_repo(REPO, repo_files())
        yield hub


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **headers: str
) -> tuple[int, Any, bytes]:
    async with http.request(method, url, headers=headers, allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.read()


async def read_until_error(resp: aiohttp.ClientResponse) -> tuple[bytes, Exception | None]:
    got = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(1 << 16):
            got += chunk
    except aiohttp.ClientError as exc:
        return bytes(got), exc
    return bytes(got), None


async def cdn_url(
    http: aiohttp.ClientSession, hub: FakeHub, path: str = LFS, rev: str = "main"
) -> str:
    status, headers, _ = await get(http, hub.resolve_url(REPO, path, rev))
    assert status == 302
    return str(headers["Location"])


def differing_offsets(a: bytes, b: bytes, block: int = 1 << 16) -> list[int]:
    assert len(a) == len(b)
    return [
        i
        for start in range(0, len(a), block)
        if a[start : start + block] != b[start : start + block]
        for i in range(start, min(start + block, len(a)))
        if a[i] != b[i]
    ]


def api(hub: FakeHub, tail: str) -> str:
    return f"{hub.endpoint}/api/models/{REPO}{tail}"


# -- content generation and hashes (no server needed) ------------------------------------------


def test_generated_content_is_deterministic_random_access_and_aperiodic() -> None:
    a, b = FakeHub(), FakeHub()
    a.add_repo(REPO, repo_files())
    b.add_repo(REPO, [RepoFile(LFS, size=LFS_SIZE, seed=1), RepoFile("x.bin", size=4096, seed=1)])
    data = a.content(REPO, LFS)
    assert len(data) == LFS_SIZE
    assert data == b.content(REPO, LFS)
    assert data[:4] == b"GGUF"
    assert b.content(REPO, "x.bin")[:4] != b"GGUF"
    for start, end in [(0, 10), (3, 1 << 20), ((1 << 20) - 5, (1 << 20) + 5), (LFS_SIZE - 3, None)]:
        assert a.content(REPO, LFS, start=start, end=end) == data[start:end]
    # Not periodic with any power-of-two period, so a mis-sliced resume cannot go unnoticed.
    for k in range(1, 22):
        p = 1 << k
        assert data[p:] != data[:-p], p
    other = FakeHub()
    other.add_repo(REPO, [RepoFile(LFS, size=LFS_SIZE, seed=2)])
    assert other.content(REPO, LFS, end=4096) != data[:4096]


def test_file_info_hashes_and_lfs_rule() -> None:
    hub = FakeHub()
    sha = hub.add_repo(
        REPO,
        [
            *repo_files(),
            RepoFile("big.txt", size=(10 << 20) + 1, seed=3),
            RepoFile("forced.json", content=b"{}", lfs=True),
        ],
    )
    assert HEX40.match(sha)
    lfs = hub.file(REPO, LFS)
    data = hub.content(REPO, LFS)
    assert (lfs.path, lfs.size, lfs.lfs, lfs.commit) == (LFS, LFS_SIZE, True, sha)
    assert lfs.sha256 == hashlib.sha256(data).hexdigest()
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{lfs.sha256}\nsize {LFS_SIZE}\n"
    ).encode()
    assert lfs.git_oid == hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    small = hub.file(REPO, SMALL, revision=sha)
    assert not small.lfs
    assert small.sha256 == hashlib.sha256(CONFIG).hexdigest()
    assert small.git_oid == hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    assert hub.file(REPO, "big.txt").lfs
    assert hub.file(REPO, "forced.json").lfs
    with pytest.raises(KeyError):
        hub.file(REPO, "missing.bin")


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        RepoFile("a.bin", content=b"x", size=1)
    with pytest.raises(ValueError):
        RepoFile("a.bin")
    with pytest.raises(ValueError):
        RepoFile("../a.bin", size=1)
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault("throttle")
    hub = FakeHub()
    hub.add_repo(REPO, [RepoFile("a", content=b"")])
    with pytest.raises(ValueError):
        hub.add_repo(REPO, [])
    with pytest.raises(ValueError):
        hub.commit(REPO, [RepoFile("a/b", content=b"")])  # "a" would be a file and a folder
    with pytest.raises(RuntimeError):
        _ = hub.endpoint


async def test_start_and_close_are_idempotent() -> None:
    hub = FakeHub()
    await hub.start()
    endpoint = hub.endpoint
    await hub.start()
    assert hub.endpoint == endpoint
    assert endpoint.startswith("http://127.0.0.1:")
    assert hub.cdn_endpoint.startswith("http://127.0.0.1:")
    assert hub.cdn_endpoint != endpoint
    await hub.close()
    await hub.close()
    with pytest.raises(RuntimeError):
        _ = hub.cdn_endpoint


async def test_close_does_not_wait_for_a_stalled_body(http: aiohttp.ClientSession) -> None:
    hub = FakeHub()
    await hub.start()
    hub.add_repo(REPO, repo_files())
    hub.add_fault(Fault("stall", after_bytes=10, seconds=60))
    async with http.get(await cdn_url(http, hub)) as resp:
        assert await resp.content.readexactly(10) == hub.content(REPO, LFS, end=10)
        async with asyncio.timeout(5):  # far below the 60 s stall
            await hub.close()
        _, error = await read_until_error(resp)
    assert error is not None
    assert hub.log[-1].bytes_sent == 10


# -- API ---------------------------------------------------------------------------------------


async def test_model_info_and_revision(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    sha = hub.file(REPO, SMALL).commit
    status, _, body = await get(http, api(hub, ""))
    assert status == 200
    info = json.loads(body)
    assert info["id"] == REPO
    assert info["sha"] == sha
    assert {s["rfilename"] for s in info["siblings"]} == TREE_FILES
    assert info["private"] is False and info["gated"] is False

    for rev in ("main", sha):
        status, _, body = await get(http, api(hub, f"/revision/{rev}?blobs=true"))
        assert status == 200
        detailed = json.loads(body)
        assert detailed["sha"] == sha
        by_name = {s["rfilename"]: s for s in detailed["siblings"]}
        assert by_name[LFS]["lfs"]["sha256"] == hub.file(REPO, LFS).sha256
        assert by_name[SMALL]["size"] == len(CONFIG) and "lfs" not in by_name[SMALL]

    status, headers, body = await get(http, api(hub, "/revision/nope"))
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    assert "error" in json.loads(body)


async def follow_tree(http: aiohttp.ClientSession, url: str) -> tuple[list[dict[str, Any]], int]:
    entries: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        async with http.get(next_url) as resp:
            assert resp.status == 200
            entries.extend(await resp.json())
            pages += 1
            link = resp.links.get("next")
            next_url = str(link["url"]) if link else None
            if next_url is not None:
                assert next_url.startswith("http://127.0.0.1:")  # absolute
    return entries, pages


async def test_tree_recursive_paginated_to_the_end(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    hub.page_size = 3
    entries, pages = await follow_tree(http, api(hub, "/tree/main?recursive=true"))
    assert pages == 3  # 6 files + 2 folders, 3 per page
    assert [e["path"] for e in entries] == sorted(TREE_FILES | TREE_DIRS)
    by_path = {e["path"]: e for e in entries}
    lfs = hub.file(REPO, LFS)
    assert by_path[LFS] == {
        "type": "file",
        "oid": lfs.git_oid,
        "size": LFS_SIZE,
        "path": LFS,
        "lfs": {
            "oid": lfs.sha256,
            "size": LFS_SIZE,
            "pointerSize": by_path[LFS]["lfs"]["pointerSize"],
        },
    }
    assert by_path[SMALL] == {
        "type": "file",
        "oid": hub.file(REPO, SMALL).git_oid,
        "size": len(CONFIG),
        "path": SMALL,
    }
    assert by_path["sub/dir"]["type"] == "directory"
    assert by_path["sub/dir"]["size"] == 0
    assert HEX40.match(by_path["sub/dir"]["oid"])


async def test_tree_direct_children_and_subpath(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    root, _ = await follow_tree(http, api(hub, "/tree/main"))
    assert {e["path"] for e in root} == {LFS, SMALL, "README.md", "sub"}
    sub, _ = await follow_tree(http, api(hub, "/tree/main/sub"))
    assert {e["path"] for e in sub} == {"sub/dir", NOTES}
    deep, _ = await follow_tree(http, api(hub, "/tree/main/sub?recursive=true"))
    assert {e["path"] for e in deep} == {"sub/dir", NOTES, SHARD1, SHARD2}
    status, headers, _ = await get(http, api(hub, "/tree/main/nowhere"))
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")


async def test_tree_cursor_stays_on_its_commit(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.page_size = 2
    async with http.get(api(hub, "/tree/main")) as resp:
        first = [e["path"] for e in await resp.json()]
        next_url = str(resp.links["next"]["url"])
    hub.commit(REPO, [RepoFile("a-new-file.txt", content=b"new")])
    rest, _ = await follow_tree(http, next_url)
    assert "a-new-file.txt" not in first + [e["path"] for e in rest]
    assert set(first + [e["path"] for e in rest]) == {LFS, SMALL, "README.md", "sub"}


# -- resolve and CDN ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_resolve_lfs_redirects_to_cdn(
    hub: FakeHub, http: aiohttp.ClientSession, method: str
) -> None:
    info = hub.file(REPO, LFS)
    status, headers, body = await get(http, hub.resolve_url(REPO, LFS), method)
    assert status == 302
    assert body == b""
    assert headers["Content-Length"] == "0"
    assert headers["Location"].startswith(hub.cdn_endpoint + "/")
    assert "expires=" in headers["Location"]
    assert headers["X-Linked-Etag"] == f'"{info.sha256}"'
    assert headers["X-Linked-Size"] == str(LFS_SIZE)
    assert headers["X-Repo-Commit"] == info.commit
    assert headers["ETag"].strip('"') != info.sha256


async def test_resolve_small_file_is_served_directly(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    info = hub.file(REPO, SMALL)
    status, headers, body = await get(http, hub.resolve_url(REPO, SMALL))
    assert (status, body) == (200, CONFIG)
    assert headers["ETag"] == f'"{info.git_oid}"'
    assert headers["X-Repo-Commit"] == info.commit
    assert headers["Content-Length"] == str(len(CONFIG))
    assert headers["Accept-Ranges"] == "bytes"
    assert "X-Linked-Etag" not in headers
    status, headers, body = await get(http, hub.resolve_url(REPO, SMALL), Range="bytes=2-4")
    assert (status, body, headers["Content-Range"]) == (
        206,
        CONFIG[2:5],
        f"bytes 2-4/{len(CONFIG)}",
    )
    status, headers, body = await get(http, hub.resolve_url(REPO, SMALL), "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(CONFIG)))


@pytest.mark.parametrize(
    ("range_header", "status", "start", "end"),
    [
        (None, 200, 0, LFS_SIZE),
        ("bytes=0-99", 206, 0, 100),
        ("bytes=1048570-1048580", 206, 1_048_570, 1_048_581),
        (f"bytes={LFS_SIZE - 10}-", 206, LFS_SIZE - 10, LFS_SIZE),
        ("bytes=-100", 206, LFS_SIZE - 100, LFS_SIZE),
        ("bytes=5-999999999", 206, 5, LFS_SIZE),
        ("bytes=9-3", 200, 0, LFS_SIZE),  # invalid ranges are ignored (RFC 9110)
        ("bytes=0-1,5-6", 200, 0, LFS_SIZE),
        ("items=0-1", 200, 0, LFS_SIZE),
    ],
)
async def test_cdn_ranges(
    hub: FakeHub,
    http: aiohttp.ClientSession,
    range_header: str | None,
    status: int,
    start: int,
    end: int,
) -> None:
    url = await cdn_url(http, hub)
    extra = {} if range_header is None else {"Range": range_header}
    got_status, headers, body = await get(http, url, **extra)
    assert got_status == status
    assert body == hub.content(REPO, LFS, start=start, end=end)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Length"] == str(end - start)
    if status == 206:
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{LFS_SIZE}"
    etag = headers["ETag"].strip('"')
    assert HEX64.match(etag) and etag != hub.file(REPO, LFS).sha256
    head_status, head_headers, head_body = await get(http, url, "HEAD", **extra)
    assert (head_status, head_body) == (status, b"")
    assert head_headers["Content-Length"] == headers["Content-Length"]
    assert head_headers["ETag"] == headers["ETag"]


async def test_cdn_unsatisfiable_range(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    url = await cdn_url(http, hub)
    status, headers, _ = await get(http, url, Range=f"bytes={LFS_SIZE}-")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{LFS_SIZE}")


async def test_if_range(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    url = await cdn_url(http, hub)
    _, headers, _ = await get(http, url, "HEAD")
    etag = headers["ETag"]
    status, _, body = await get(http, url, Range="bytes=10-19", **{"If-Range": etag})
    assert (status, body) == (206, hub.content(REPO, LFS, start=10, end=20))
    status, _, body = await get(http, url, Range="bytes=10-19", **{"If-Range": '"stale"'})
    assert (status, len(body)) == (200, LFS_SIZE)


# -- faults ------------------------------------------------------------------------------------


async def test_truncate_sends_exactly_after_bytes(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    hub.add_fault(Fault("truncate", path=LFS, after_bytes=100_000))
    url = await cdn_url(http, hub)
    async with http.get(url) as resp:
        assert resp.headers["Content-Length"] == str(LFS_SIZE)
        got, error = await read_until_error(resp)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert got == hub.content(REPO, LFS, end=100_000)
    assert hub.requests(origin="cdn")[-1].bytes_sent == 100_000


async def test_stall_pauses_mid_body(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("stall", path=LFS, after_bytes=1000, seconds=0.3))
    url = await cdn_url(http, hub)
    began = time.monotonic()
    status, _, body = await get(http, url, Range="bytes=0-9999")
    assert time.monotonic() - began >= 0.25
    assert (status, body) == (206, hub.content(REPO, LFS, end=10_000))


async def test_reset_aborts_the_connection(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("reset", origin="cdn", after_bytes=50_000))
    url = await cdn_url(http, hub)
    async with http.get(url) as resp:
        got, error = await read_until_error(resp)
    assert isinstance(error, aiohttp.ClientError)
    assert len(got) <= 50_000
    record = hub.requests(origin="cdn")[-1]
    assert (record.status, record.bytes_sent) == (200, 50_000)


async def test_status_faults_with_retry_after(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    hub.add_fault(Fault("status", path=LFS, origin="cdn", status=429, retry_after="120"))
    hub.add_fault(Fault("status", path=SMALL, status=503, retry_after=date))
    hub.add_fault(Fault("status", path="/tree/", origin="api", status=500))
    url = await cdn_url(http, hub)  # origin="cdn": the resolve hop is untouched
    status, headers, _ = await get(http, url)
    assert (status, headers["Retry-After"]) == (429, "120")
    status, headers, _ = await get(http, hub.resolve_url(REPO, SMALL))  # "any": the body hop
    assert (status, headers["Retry-After"]) == (503, date)
    status, headers, _ = await get(http, api(hub, "/tree/main"))
    assert status == 500 and "Retry-After" not in headers
    hub.add_fault(Fault("status", path=SHARD1, origin="hub", status=502))
    status, _, _ = await get(http, hub.resolve_url(REPO, SHARD1))  # "hub": the resolve hop
    assert status == 502
    status, _, _ = await get(http, api(hub, ""))
    assert status == 200


async def test_ignore_range(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("ignore_range", path=LFS))
    url = await cdn_url(http, hub)
    status, headers, body = await get(http, url, Range="bytes=100-199")
    assert status == 200 and "Content-Range" not in headers
    assert body == hub.content(REPO, LFS)


async def test_corrupt_flips_exactly_one_byte(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    offset = 1_500_000
    fault = hub.add_fault(Fault("corrupt", path=LFS, after_bytes=offset))
    url = await cdn_url(http, hub)
    _, _, elsewhere = await get(http, url, Range="bytes=0-999")
    assert elsewhere == hub.content(REPO, LFS, end=1000)
    assert fault.hits == 0  # a range without the offset is served intact and not counted
    _, _, body = await get(http, url)
    assert differing_offsets(body, hub.content(REPO, LFS)) == [offset]


async def test_throttle_caps_the_rate(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("throttle", path=LFS, rate=4 << 20))
    url = await cdn_url(http, hub)
    began = time.monotonic()
    status, _, body = await get(http, url, Range=f"bytes=0-{(1 << 20) - 1}")
    assert time.monotonic() - began >= 0.2  # 1 MiB at 4 MiB/s is at least 0.25 s
    assert (status, body) == (206, hub.content(REPO, LFS, end=1 << 20))


async def test_expire_makes_the_cdn_url_go_stale(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("expire", path=LFS, seconds=0.3, times=1))
    short_lived = await cdn_url(http, hub)
    long_lived = await cdn_url(http, hub)
    status, _, _ = await get(http, short_lived, "HEAD")
    assert status == 200
    await asyncio.sleep(0.35)
    status, _, _ = await get(http, short_lived)
    assert status == 403
    status, _, _ = await get(http, long_lived, "HEAD")
    assert status == 200
    tampered = re.sub(r"expires=[0-9.]+", "expires=99999999999.000", short_lived)
    status, _, _ = await get(http, tampered)
    assert status == 403


async def test_redirect_loop(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("redirect_loop", path=LFS))
    url = hub.resolve_url(REPO, LFS)
    for _ in range(3):
        status, headers, _ = await get(http, url)
        assert (status, headers["Location"]) == (302, url)
    with pytest.raises(aiohttp.TooManyRedirects):
        async with http.get(url, max_redirects=5):
            pass


async def test_bad_linked_etag(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("bad_linked_etag", path=LFS))
    status, headers, _ = await get(http, hub.resolve_url(REPO, LFS))
    linked = headers["X-Linked-Etag"].strip('"')
    assert status == 302
    assert HEX64.match(linked) and linked != hub.file(REPO, LFS).sha256
    _, _, body = await get(http, headers["Location"], Range="bytes=0-99")
    assert body == hub.content(REPO, LFS, end=100)  # the bytes themselves are fine


async def test_times_limits_a_fault(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    status_fault = hub.add_fault(Fault("status", path=SMALL, status=503, times=1))
    first, _, _ = await get(http, hub.resolve_url(REPO, SMALL))
    second, _, body = await get(http, hub.resolve_url(REPO, SMALL))
    assert (first, second, body) == (503, 200, CONFIG)
    assert status_fault.hits == 1

    truncate = hub.add_fault(Fault("truncate", path=LFS, after_bytes=10, times=1))
    url = await cdn_url(http, hub)
    status, _, _ = await get(http, url, "HEAD")  # a HEAD has no body to truncate
    assert status == 200 and truncate.hits == 0
    async with http.get(url) as resp:
        got, error = await read_until_error(resp)
    assert (len(got), error is not None) == (10, True)
    _, _, body = await get(http, url)
    assert len(body) == LFS_SIZE and truncate.hits == 1
    hub.clear_faults()
    assert hub.faults == []


async def test_fault_targets_origin_and_path(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_fault(Fault("truncate", origin="cdn", after_bytes=3))  # every file, CDN only
    status, _, body = await get(http, hub.resolve_url(REPO, SMALL))  # small files skip the CDN
    assert (status, body) == (200, CONFIG)
    hub.clear_faults()
    hub.add_fault(Fault("truncate", path="README", after_bytes=3))
    async with http.get(hub.resolve_url(REPO, "README.md")) as resp:
        got, error = await read_until_error(resp)
    assert (got, error is not None) == (b"# t", True)
    status, _, body = await get(http, hub.resolve_url(REPO, SMALL))
    assert (status, body) == (200, CONFIG)


# -- access control and errors -----------------------------------------------------------------


async def test_private_repo_needs_a_valid_token(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_repo("acme/secret", [RepoFile("w.gguf", size=1000, seed=5)], private=True)
    hub.tokens.add("hf_good")
    urls = [
        f"{hub.endpoint}/api/models/acme/secret",
        f"{hub.endpoint}/api/models/acme/secret/tree/main",
        hub.resolve_url("acme/secret", "w.gguf"),
    ]
    for url in urls:
        status, got, body = await get(http, url)
        assert (status, got["X-Error-Code"]) == (401, "RepoNotFound")
        assert "error" in json.loads(body)
        # A token the Hub does not know is refused as such (huggingface_hub keys on the message).
        status, got, body = await get(http, url, Authorization="Bearer hf_bad")
        assert status == 401 and "X-Error-Code" not in got
        assert got["X-Error-Message"] == "Invalid credentials in Authorization header"
        assert "error" in json.loads(body)
        status, _, _ = await get(http, url, Authorization="Bearer hf_good")
        assert status in (200, 302)


async def test_gated_repo_needs_a_grant(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.add_repo("acme/gated", [RepoFile("w.gguf", size=1000, seed=5)], gated=True)
    hub.tokens.add("hf_plain")
    hub.grant("acme/gated", "hf_granted")
    status, _, body = await get(http, f"{hub.endpoint}/api/models/acme/gated")
    assert status == 200 and json.loads(body)["gated"]  # metadata stays visible
    url = hub.resolve_url("acme/gated", "w.gguf")
    for headers in ({}, {"Authorization": "Bearer hf_plain"}):
        status, got, _ = await get(http, url, **headers)
        assert (status, got["X-Error-Code"]) == (403, "GatedRepo")
    status, _, _ = await get(http, url, Authorization="Bearer hf_granted")
    assert status == 302


async def test_not_found_codes(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    cases = [
        (f"{hub.endpoint}/api/models/acme/nope", "RepoNotFound"),
        (f"{hub.endpoint}/acme/nope/resolve/main/x.gguf", "RepoNotFound"),
        (hub.resolve_url(REPO, "missing.gguf"), "EntryNotFound"),
        (hub.resolve_url(REPO, SMALL, revision="0" * 40), "RevisionNotFound"),
    ]
    for url, code in cases:
        status, headers, body = await get(http, url)
        assert (status, headers["X-Error-Code"]) == (404, code), url
        assert json.loads(body)["error"]


# -- commits -----------------------------------------------------------------------------------


async def test_branch_moves_while_old_commit_keeps_serving(
    hub: FakeHub, http: aiohttp.ClientSession
) -> None:
    old_sha = hub.file(REPO, LFS).commit
    old = hub.content(REPO, LFS)
    old_cdn = await cdn_url(http, hub)
    new_sha = hub.commit(REPO, [RepoFile(LFS, size=LFS_SIZE, seed=2)])
    new = hub.content(REPO, LFS)
    assert new_sha != old_sha and new != old
    assert hub.content(REPO, LFS, revision=old_sha) == old

    status, headers, _ = await get(http, hub.resolve_url(REPO, LFS))
    assert headers["X-Repo-Commit"] == new_sha
    _, _, body = await get(http, str(headers["Location"]))
    assert body == new
    _, headers, _ = await get(http, hub.resolve_url(REPO, LFS, revision=old_sha))
    assert headers["X-Repo-Commit"] == old_sha
    _, _, body = await get(http, str(headers["Location"]))
    assert body == old
    _, _, body = await get(http, old_cdn)
    assert body == old
    assert hub.file(REPO, SMALL).commit == new_sha  # replace=False keeps the other files

    hub.commit(REPO, [RepoFile(SMALL, content=b"{}")], replace=True)
    status, headers, _ = await get(http, hub.resolve_url(REPO, LFS))
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")


# -- request log -------------------------------------------------------------------------------


async def test_request_log(hub: FakeHub, http: aiohttp.ClientSession) -> None:
    hub.tokens.add("hf_t")
    _, headers, _ = await get(http, hub.resolve_url(REPO, LFS), Authorization="Bearer hf_t")
    url = str(headers["Location"])
    await get(http, url, Range="bytes=10-29", **{"If-Range": "x"})
    await get(http, url, "HEAD")
    (resolve,) = hub.requests(origin="hub", path_contains="resolve")
    assert (resolve.method, resolve.status, resolve.authorization) == ("GET", 302, True)
    assert resolve.path == f"/{REPO}/resolve/main/{LFS}" and resolve.bytes_sent == 0
    ranged, head = hub.requests(origin="cdn")
    assert (ranged.range, ranged.if_range, ranged.authorization) == ("bytes=10-29", "x", False)
    assert (ranged.status, ranged.bytes_sent) == (200, LFS_SIZE)  # If-Range mismatch → whole
    assert "expires=" in ranged.query
    assert (head.method, head.bytes_sent) == ("HEAD", 0)
    assert hub.requests(method="head") == [head]
    assert hub.requests(path_contains="nothing-like-this") == []
    assert hub.log[0].time <= hub.log[-1].time


# -- conformance with huggingface_hub ----------------------------------------------------------


async def test_huggingface_hub_model_info_and_tree(hub: FakeHub) -> None:
    hub.page_size = 2
    client = HfApi(endpoint=hub.endpoint, token=False)
    info = await asyncio.to_thread(client.model_info, REPO)
    assert info.sha == hub.file(REPO, LFS).commit
    assert {s.rfilename for s in info.siblings or []} == TREE_FILES
    entries = await asyncio.to_thread(lambda: list(client.list_repo_tree(REPO, recursive=True)))
    assert {e.path for e in entries} == TREE_FILES | TREE_DIRS
    lfs_entry = next(e for e in entries if e.path == LFS)
    assert isinstance(lfs_entry, HfRepoFile) and lfs_entry.lfs is not None
    assert lfs_entry.lfs.sha256 == hub.file(REPO, LFS).sha256
    assert len(hub.requests(path_contains="/tree/")) == 4  # 8 entries, 2 per page


async def test_huggingface_hub_downloads(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/secret", [RepoFile(LFS, size=LFS_SIZE, seed=1)], private=True)
    hub.tokens.add("hf_t")

    def download(repo: str, name: str, token: str | bool) -> bytes:
        path = hf_hub_download(repo, name, endpoint=hub.endpoint, cache_dir=tmp_path, token=token)
        return Path(path).read_bytes()

    assert await asyncio.to_thread(download, REPO, LFS, False) == hub.content(REPO, LFS)
    assert await asyncio.to_thread(download, REPO, SHARD2, False) == hub.content(REPO, SHARD2)
    assert await asyncio.to_thread(download, REPO, SMALL, False) == CONFIG
    assert await asyncio.to_thread(download, "acme/secret", LFS, "hf_t") == hub.content(REPO, LFS)
    # The token went to the Hub only; the cross-origin CDN hop got none.
    secret = hub.requests(path_contains="acme/secret")
    assert {(r.origin, r.authorization) for r in secret} == {("hub", True), ("cdn", False)}


async def test_huggingface_hub_error_mapping(hub: FakeHub) -> None:
    hub.add_repo("acme/gated", [RepoFile("w.gguf", size=10, seed=1)], gated=True)

    def metadata(repo: str, name: str, revision: str | None = None) -> object:
        url = hf_hub_url(repo, name, revision=revision, endpoint=hub.endpoint)
        return get_hf_file_metadata(url, token=False)

    meta: Any = await asyncio.to_thread(metadata, REPO, LFS)
    assert (meta.etag, meta.size) == (hub.file(REPO, LFS).sha256, LFS_SIZE)
    assert meta.location.startswith(hub.cdn_endpoint)
    cases: list[tuple[type[Exception], str, str, str | None]] = [
        (RemoteEntryNotFoundError, REPO, "missing.gguf", None),
        (RevisionNotFoundError, REPO, LFS, "f" * 40),
        (RepositoryNotFoundError, "acme/nope", LFS, None),
        (GatedRepoError, "acme/gated", "w.gguf", None),
    ]
    for error, repo, name, revision in cases:
        with pytest.raises(error):
            await asyncio.to_thread(metadata, repo, name, revision)


# -- the standalone server ---------------------------------------------------------------------


async def test_module_runs_as_a_server(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelfetch.testing.fakehub",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("endpoint: http://127.0.0.1:")
        endpoint = line.split()[1]
        async with http.get(
            f"{endpoint}/api/models/modelfetch/tiny-GGUF/tree/main?recursive=true"
        ) as resp:
            paths = {e["path"] for e in await resp.json()}
        assert "tiny-Q8_0.gguf" in paths
        assert {p for p in paths if "Q4_K_M" in p and p.endswith(".gguf")} == {
            "Q4_K_M/tiny-Q4_K_M-00001-of-00002.gguf",
            "Q4_K_M/tiny-Q4_K_M-00002-of-00002.gguf",
        }
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
