"""The hostile-input matrix: servers and listings that lie, names that try to escape.

Every case ends with a clear, typed error (or a safe outcome), nothing written outside the target
directory, and nothing already on disk lost. Listings come from a scripted Hub (the fake hub
refuses to hold such names); headers no HTTP library would send come from a raw TCP server.
Cases that show a bug are `xfail(strict=True)` with the place and the suggested fix.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import hashlib
import json
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelfetch.core import events as ev
from modelfetch.core.errors import (
    HubProtocolError,
    IntegrityError,
    NetworkError,
    RateLimitedError,
    SchemeError,
    SpecError,
    TooManyRedirectsError,
    TransferError,
    UnsafePathError,
)
from modelfetch.hub import HubConfig
from modelfetch.manager import DownloadManager
from modelfetch.requests import FileRequest, GroupRequest
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile
from modelfetch.transfer import TransferRequest, TransferSession, fetch_file, make_session
from modelfetch.transfer.sink import PartState

from .conftest import group_of, next_event
from .test_manager import MiB, settings

SHA40 = "a" * 40
BODY = hashlib.shake_256(b"hostile").digest(256 << 10)
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def written_outside(tmp_path: Path, *allowed: Path) -> list[Path]:
    """Files under tmp_path that are in none of the allowed directories."""
    return sorted(p for p in files_under(tmp_path) if not any(p.is_relative_to(a) for a in allowed))


# -- a scripted Hub (listings the fake hub would refuse to hold) ------------------------------


@dataclass
class ScriptedHub:
    tree: Any = field(default_factory=list)  # JSON-able, or raw bytes
    revision: Any = field(default_factory=lambda: {"sha": SHA40})
    revision_headers: dict[str, str] = field(default_factory=dict)
    revision_status: int = 200
    resolves: int = 0
    url: str = ""

    def _body(self, value: Any) -> bytes:
        return value if isinstance(value, bytes) else json.dumps(value).encode()

    async def _revision(self, request: web.Request) -> web.Response:
        return web.Response(
            status=self.revision_status,
            body=self._body(self.revision),
            headers={"Content-Type": "application/json", **self.revision_headers},
        )

    async def _tree(self, request: web.Request) -> web.Response:
        return web.Response(body=self._body(self.tree), content_type="application/json")

    async def _resolve(self, request: web.Request) -> web.Response:
        self.resolves += 1
        return web.Response(status=404)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedHub]:
    hub = ScriptedHub()
    app = web.Application()
    app.router.add_get("/api/models/{o}/{n}/revision/{rev}", hub._revision)
    app.router.add_get("/api/models/{o}/{n}/tree/{rev}", hub._tree)
    app.router.add_route("*", "/{o}/{n}/resolve/{rev}/{path:.+}", hub._resolve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hub.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield hub
    await runner.cleanup()


def lfs_entry(path: str, size: int = 1000, sha: str = "c" * 64) -> dict[str, object]:
    return {"type": "file", "path": path, "size": size, "oid": "b" * 40, "lfs": {"oid": sha}}


def git_entry(path: str, size: int = 10, oid: str = "d" * 40) -> dict[str, object]:
    return {"type": "file", "path": path, "size": size, "oid": oid}


def scripted_manager(tmp_path: Path, hub: ScriptedHub) -> DownloadManager:
    return DownloadManager(
        home=tmp_path / "home",
        settings=settings(),
        hub=HubConfig(hub.url),
        models_dir=tmp_path / "models",
        workers=False,
    )


async def refused(
    tmp_path: Path, hub: ScriptedHub, spec: str, error: type[Exception], **add: Any
) -> Exception:
    """`add(spec)` must raise `error` before anything is queued, fetched or written."""
    async with scripted_manager(tmp_path, hub) as m:
        with pytest.raises(error) as caught:
            await m.add(spec, **add)
        assert await m.snapshot() == []
    assert hub.resolves == 0
    assert written_outside(tmp_path, tmp_path / "home") == []
    return caught.value


# -- 1. names from the tree -------------------------------------------------------------------

HOSTILE_PATHS = {
    "dotdot": "../../escape-Q4_K_M.gguf",
    "inner-dotdot": "Q4/../../../escape-Q4_K_M.gguf",
    "absolute": "/tmp/escape-Q4_K_M.gguf",
    "nul": "a\x00b-Q4_K_M.gguf",
    "newline": "a\nb-Q4_K_M.gguf",
    "backslash": "..\\..\\escape-Q4_K_M.gguf",
    "drive-letter": "C:escape-Q4_K_M.gguf",
    "alternate-stream": "m:evil-Q4_K_M.gguf",
    "reserved-name": "CON.Q4_K_M.gguf",
    "reserved-folder": "nul/m-Q4_K_M.gguf",
    "over-long": "x" * 300 + "-Q4_K_M.gguf",
    "empty-component": "a//m-Q4_K_M.gguf",
    "dot-component": "./m-Q4_K_M.gguf",
    "bidi-override": "m\u202eFUGG.exe-Q4_K_M.gguf",
}


@pytest.mark.parametrize("layout", ["plain", "hf-cache"])
@pytest.mark.parametrize("path", HOSTILE_PATHS.values(), ids=HOSTILE_PATHS.keys())
async def test_a_hostile_model_file_name_is_refused_before_any_transfer(
    tmp_path: Path, scripted: ScriptedHub, path: str, layout: str
) -> None:
    scripted.tree = [lfs_entry(path)]
    error = await refused(tmp_path, scripted, "o/n:Q4_K_M", UnsafePathError, layout=layout)
    assert "path" in str(error)


@pytest.mark.parametrize("path", ["../../x.json", "/etc/x.json", "sub\\x.json", "CON.json"])
async def test_a_hostile_extra_file_name_is_refused_too(
    tmp_path: Path, scripted: ScriptedHub, path: str
) -> None:
    scripted.tree = [lfs_entry("m-Q4_K_M.gguf"), git_entry(path)]
    await refused(tmp_path, scripted, "o/n:Q4_K_M", UnsafePathError, include=["*.json"])


@pytest.mark.parametrize(
    "spec",
    [
        "o/n/../escape.gguf",
        "o/n/a//b.gguf",
        "hf://o/n/./x.gguf",
        "{hub}/o/n/resolve/main/%2e%2e/escape.gguf",
        "{hub}/o/n/resolve/main/a%00b.gguf",
        "o/n/ x.gguf",
    ],
)
async def test_a_hostile_path_in_the_request_is_a_spec_error(
    tmp_path: Path, scripted: ScriptedHub, spec: str
) -> None:
    error = await refused(tmp_path, scripted, spec.format(hub=scripted.url), SpecError)
    assert "Accepted forms" in str(error)


async def test_odd_but_harmless_unicode_names_arrive_inside_the_target(
    hub: FakeHub, tmp_path: Path
) -> None:
    names = [
        "cafe\u0301-Q4_K_M.gguf",  # NFD: stored as NFC
        "a\uff0fb\u2215c-Q4_K_M.gguf",  # look-alike slashes are just characters
        "\u05e9\u05dc\u05d5\u05dd \U0001f468\u200d\U0001f469-Q4_K_M.gguf",  # RTL letters, ZWJ
    ]
    hub.add_repo("o/u", [RepoFile(n, size=1000 + i, seed=i) for i, n in enumerate(names)])
    models = tmp_path / "models"
    async with DownloadManager(
        home=tmp_path / "home", settings=settings(), hub=HubConfig(hub.endpoint), models_dir=models
    ) as m:
        ids = [await m.add(f"o/u/{n}") for n in names]
        await asyncio.wait_for(m.wait(ids), 20)
        views = await m.snapshot()
    assert [v.status for v in views] == ["completed"] * 3
    arrived = sorted(p.name for p in files_under(models))
    assert arrived == sorted(unicodedata.normalize("NFC", n) for n in names)
    assert written_outside(tmp_path, tmp_path / "home", models / "o" / "u") == []


async def test_a_content_disposition_cannot_steer_a_plain_download_out(
    tmp_path: Path, raw: RawServer
) -> None:
    raw.respond = lambda req: response(
        200, BODY, {"Content-Disposition": 'attachment; filename="../../../escape.gguf"'}
    )
    models = tmp_path / "models"
    async with DownloadManager(home=tmp_path / "home", settings=settings(), models_dir=models) as m:
        gid = await m.add(f"{raw.url}/download?id=1")
        await asyncio.wait_for(m.wait([gid]), 20)
        view = await m.group_view(gid)
    assert view.status == "completed" and view.files[0].dest == str(models / "escape.gguf")
    assert written_outside(tmp_path, tmp_path / "home", models) == []


# -- 2. listings: duplicates, gaps, garbage ----------------------------------------------------


async def test_a_tree_listing_a_path_twice_is_a_protocol_error(
    tmp_path: Path, scripted: ScriptedHub
) -> None:
    scripted.tree = [lfs_entry("m-Q4_K_M.gguf"), lfs_entry("m-Q4_K_M.gguf", sha="e" * 64)]
    error = await refused(tmp_path, scripted, "o/n:Q4_K_M", HubProtocolError)
    assert "twice" in str(error)


async def test_two_tree_paths_that_normalise_to_one_name_are_refused(
    tmp_path: Path, scripted: ScriptedHub
) -> None:
    scripted.tree = [
        lfs_entry("m-Q4_K_M.gguf"),
        git_entry("caf\u00e9.json", oid="1" * 40),
        git_entry("cafe\u0301.json", oid="2" * 40),
    ]
    await refused(tmp_path, scripted, "o/n:Q4_K_M", SpecError, include=["*.json"])


async def test_two_files_with_one_destination_are_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(
        "o/d", [RepoFile("a.gguf", size=MiB, seed=1), RepoFile("b.gguf", size=MiB, seed=2)]
    )
    a, b = group_of(hub, "o/d", ["a.gguf", "b.gguf"], tmp_path / "out").files
    clash = FileRequest(url=b.url, path="a.gguf", size=b.size, sha256=b.sha256)
    async with DownloadManager(home=tmp_path / "home", settings=settings(), workers=False) as m:
        with pytest.raises(SpecError):
            await m.enqueue(GroupRequest(name="two", dest_dir=tmp_path / "out", files=(a, clash)))
        await m.enqueue(GroupRequest(name="one", dest_dir=tmp_path / "out", files=(a,)))
        with pytest.raises(SpecError):
            await m.enqueue(GroupRequest(name="other", dest_dir=tmp_path / "out", files=(clash,)))


async def test_a_shard_set_with_a_gap_is_refused_naming_the_missing_shard(
    tmp_path: Path, scripted: ScriptedHub
) -> None:
    scripted.tree = [
        lfs_entry("m-Q4_K_M-00001-of-00003.gguf"),
        lfs_entry("m-Q4_K_M-00003-of-00003.gguf"),
    ]
    error = await refused(tmp_path, scripted, "o/n:Q4_K_M", SpecError)
    assert "m-Q4_K_M-00002-of-00003.gguf" in str(error) and "incomplete" in str(error)


MALFORMED = {
    "html-revision": ("revision", b"<html>rate limited</html>"),
    "list-revision": ("revision", []),
    "no-sha": ("revision", {"id": "o/n"}),
    "short-sha": ("revision", {"sha": "abc"}),
    "tree-object": ("tree", {"files": []}),
    "tree-truncated-json": ("tree", b'[{"type": "file", "path": "m-Q4'),
    "entry-not-object": ("tree", ["m-Q4_K_M.gguf"]),
    "no-path": ("tree", [{"type": "file", "size": 1, "oid": "b" * 40}]),
    "size-string": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "size": "1000"}]),
    "size-negative": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "size": -1}]),
    "size-bool": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "size": True}]),
    "size-float": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "size": 1e30}]),
    "oid-garbage": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "oid": "zz"}]),
    "lfs-oid-garbage": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "lfs": {"oid": "x" * 64}}]),
    "lfs-not-object": ("tree", [{**lfs_entry("m-Q4_K_M.gguf"), "lfs": "yes"}]),
    "invalid-utf8": ("tree", b'[{"path": "\xff\xfe"}]'),
}


@pytest.mark.parametrize(("where", "body"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_api_answers_are_clear_protocol_errors(
    tmp_path: Path, scripted: ScriptedHub, where: str, body: object
) -> None:
    scripted.tree = [lfs_entry("m-Q4_K_M.gguf")]
    setattr(scripted, where, body)
    error = await refused(tmp_path, scripted, "o/n:Q4_K_M", HubProtocolError)
    assert "malformed answer" in str(error)


async def test_deeply_nested_json_is_a_protocol_error(
    tmp_path: Path, scripted: ScriptedHub
) -> None:
    scripted.tree = b"[" * 100_000 + b"]" * 100_000
    await refused(tmp_path, scripted, "o/n:Q4_K_M", HubProtocolError)


async def test_an_absurd_listed_size_is_a_protocol_error(
    tmp_path: Path, scripted: ScriptedHub
) -> None:
    scripted.tree = [lfs_entry("m-Q4_K_M.gguf", size=2**70)]
    await refused(tmp_path, scripted, "o/n:Q4_K_M", HubProtocolError)


async def test_a_year_long_retry_after_from_the_api_is_not_slept_on(
    tmp_path: Path, scripted: ScriptedHub
) -> None:
    scripted.revision_status = 429
    scripted.revision_headers = {"Retry-After": str(365 * 24 * 3600)}
    began = time.monotonic()
    error = await refused(tmp_path, scripted, "o/n:Q4_K_M", RateLimitedError)
    assert time.monotonic() - began < 10
    assert isinstance(error, RateLimitedError) and error.retry_after == 365 * 24 * 3600


# -- 3. transfers against a server that lies (raw bytes on the wire) ---------------------------


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]


def response(
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    length: str | None = None,
) -> bytes:
    """A raw HTTP/1.1 response; `length` overrides Content-Length with any text at all."""
    lines = [f"HTTP/1.1 {status} X", "Connection: close"]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class RawServer:
    """One response per connection, computed from the request by `respond`, written as is."""

    respond: Callable[[RawRequest], bytes] = lambda req: response(404, b"")
    hits: list[RawRequest] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in head[1:] if line)
            }
            request = RawRequest(method, path, headers)
            self.hits.append(request)
            data = self.respond(request)
            writer.write(data if method != "HEAD" else data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    yield server
    listener.close()


@pytest.fixture
async def session() -> AsyncIterator[TransferSession]:
    async with make_session() as s:
        yield s


def requested_offset(request: RawRequest) -> int:
    value = request.headers.get("range", "bytes=0-")
    return int(value.removeprefix("bytes=").split("-")[0])


def a_partial(dest: Path, url: str, size: int) -> bytes:
    """A resumable `.part` holding the first `size` bytes of BODY, as a transfer leaves it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    PartState(url=url, validator=None, total=len(BODY), sha256=BODY_SHA).save(
        dest.with_name(dest.name + ".part.json")
    )
    dest.with_name(dest.name + ".part").write_bytes(BODY[:size])
    return BODY[:size]


def part_of(dest: Path) -> bytes | None:
    part = dest.with_name(dest.name + ".part")
    return part.read_bytes() if part.exists() else None


async def fetch(session: TransferSession, url: str, dest: Path, *, planned: bool = True) -> object:
    request = TransferRequest(
        url=url,
        dest=dest,
        expected_size=len(BODY) if planned else None,
        expected_sha256=BODY_SHA if planned else None,
        stall_timeout=5.0,
    )
    return await asyncio.wait_for(fetch_file(session, request), 20)


LYING_LENGTHS = {
    "shorter": (str(len(BODY) - 1000), BODY[:-1000], IntegrityError, "announces"),
    "longer": (str(len(BODY) + 1000), BODY, IntegrityError, "announces"),
    "negative": ("-1", BODY, NetworkError, "Content-Length"),
    "garbage": ("12abc", BODY, NetworkError, "Content-Length"),
    "absurd": (str(1 << 50), BODY, IntegrityError, "announces"),
    "overflowing": (str(10**30), BODY, NetworkError, "Content-Length"),
}


@pytest.mark.parametrize(
    ("length", "body", "error", "says"), LYING_LENGTHS.values(), ids=LYING_LENGTHS.keys()
)
async def test_a_lying_content_length_is_refused_and_writes_nothing(
    tmp_path: Path,
    raw: RawServer,
    session: TransferSession,
    length: str,
    body: bytes,
    error: type[Exception],
    says: str,
) -> None:
    raw.respond = lambda req: response(200, body, length=length)
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(error, match=says):
        await fetch(session, f"{raw.url}/f", dest)
    assert not dest.exists() and part_of(dest) in (None, b"")


async def test_a_body_that_ends_early_keeps_its_prefix_for_the_next_attempt(
    tmp_path: Path, raw: RawServer, session: TransferSession
) -> None:
    raw.respond = lambda req: response(200, BODY[:100_000], length=str(len(BODY)))
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(NetworkError):
        await fetch(session, f"{raw.url}/f", dest, planned=False)
    assert part_of(dest) == BODY[:100_000]  # nothing received is thrown away
    raw.respond = lambda req: response(
        206,
        BODY[requested_offset(req) :],
        {"Content-Range": f"bytes {requested_offset(req)}-{len(BODY) - 1}/{len(BODY)}"},
    )
    await fetch(session, f"{raw.url}/f", dest)
    assert dest.read_bytes() == BODY and raw.hits[-1].headers["range"] == "bytes=100000-"


@pytest.mark.parametrize(
    ("linked", "planned", "error"),
    [
        (str(len(BODY) - 1), True, IntegrityError),
        (str(len(BODY) + 1), True, IntegrityError),
        (str(1 << 50), False, IntegrityError),
        ("-5", True, None),  # not a size at all: ignored, the digest still decides
        ("lots", True, None),
    ],
)
async def test_a_lying_x_linked_size_is_caught_before_the_body(
    tmp_path: Path,
    raw: RawServer,
    session: TransferSession,
    linked: str,
    planned: bool,
    error: type[Exception] | None,
) -> None:
    def respond(req: RawRequest) -> bytes:
        if req.path == "/resolve":
            return response(302, b"", {"Location": "/cdn", "X-Linked-Size": linked})
        return response(200, BODY)

    raw.respond = respond
    dest = tmp_path / "out" / "f.bin"
    if error is None:
        await fetch(session, f"{raw.url}/resolve", dest, planned=planned)
        assert dest.read_bytes() == BODY
        return
    with pytest.raises(error):
        await fetch(session, f"{raw.url}/resolve", dest, planned=planned)
    assert not dest.exists() and part_of(dest) in (None, b"")


def content_range_of(kind: str) -> Callable[[RawRequest], bytes]:
    def respond(req: RawRequest) -> bytes:
        start = requested_offset(req)
        n = len(BODY)
        ranges = {
            "wrong-start": (f"bytes 0-{n - 1}/{n}", BODY),
            "missing": (None, BODY[start:]),
            "unsatisfied-form": (f"bytes */{n}", BODY[start:]),
            "garbage": ("bytes lots", BODY[start:]),
            "inverted": (f"bytes {n - 1}-{start}/{n}", BODY[start:]),
        }
        value, body = ranges[kind]
        return response(206, body, {"Content-Range": value} if value else {})

    return respond


@pytest.mark.parametrize(
    "kind", ["wrong-start", "missing", "unsatisfied-form", "garbage", "inverted"]
)
async def test_a_content_range_that_does_not_match_the_request_is_refused_and_the_part_kept(
    tmp_path: Path, raw: RawServer, session: TransferSession, kind: str
) -> None:
    dest = tmp_path / "out" / "f.bin"
    url = f"{raw.url}/f"
    kept = a_partial(dest, url, 5000)
    raw.respond = content_range_of(kind)
    with pytest.raises(NetworkError, match=r"Content-Range|asked for bytes"):
        await fetch(session, url, dest)
    assert raw.hits[0].headers["range"] == "bytes=5000-"
    assert part_of(dest) == kept and not dest.exists()


async def test_a_content_range_total_that_contradicts_the_plan_keeps_the_part(
    tmp_path: Path, raw: RawServer, session: TransferSession
) -> None:
    dest = tmp_path / "out" / "f.bin"
    url = f"{raw.url}/f"
    kept = a_partial(dest, url, 5000)
    n = len(BODY)
    raw.respond = lambda req: response(
        206,
        BODY[requested_offset(req) :],
        {"Content-Range": f"bytes {requested_offset(req)}-{n - 1}/{2 * n}"},
    )
    with pytest.raises(IntegrityError):
        await fetch(session, url, dest)
    assert part_of(dest) == kept


@pytest.mark.parametrize("resume_from", [0, 5000], ids=["fresh", "ranged"])
async def test_a_gzip_body_is_refused_and_the_part_kept(
    tmp_path: Path, raw: RawServer, session: TransferSession, resume_from: int
) -> None:
    dest = tmp_path / "out" / "f.bin"
    url = f"{raw.url}/f"
    kept = a_partial(dest, url, resume_from) if resume_from else None

    def respond(req: RawRequest) -> bytes:
        start = requested_offset(req)
        headers = {"Content-Encoding": "gzip"}
        if "range" in req.headers:
            headers["Content-Range"] = f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"
        return response(206 if start else 200, gzip.compress(BODY[start:]), headers)

    raw.respond = respond
    with pytest.raises(TransferError, match="Content-Encoding 'gzip'"):
        await fetch(session, url, dest)
    assert raw.hits[0].headers.get("accept-encoding") == "identity"
    assert part_of(dest) == kept and not dest.exists()


# -- 4. redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "ftp://127.0.0.1/x", "javascript:alert(1)", "data:,hello"],
)
async def test_a_redirect_to_another_scheme_is_refused(
    tmp_path: Path, raw: RawServer, session: TransferSession, location: str
) -> None:
    raw.respond = lambda req: response(302, b"", {"Location": location})
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(SchemeError, match="refusing"):
        await fetch(session, f"{raw.url}/f", dest)
    assert files_under(tmp_path) == set()


async def test_a_plain_url_redirected_to_a_file_url_fails_clearly_in_the_manager(
    tmp_path: Path, raw: RawServer
) -> None:
    raw.respond = lambda req: response(302, b"", {"Location": "file:///etc/passwd"})
    async with DownloadManager(
        home=tmp_path / "home", settings=settings(), models_dir=tmp_path / "models"
    ) as m:
        gid = await m.add(f"{raw.url}/model.gguf")
        await asyncio.wait_for(m.wait([gid]), 20)
        (view,) = (await m.group_view(gid)).files
    assert view.status == "failed" and view.error_kind == "scheme"
    assert "scheme" in (view.error_message or "")
    assert written_outside(tmp_path, tmp_path / "home") == []


async def test_a_redirect_loop_ends_with_a_clear_error(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("o/l", [RepoFile("m.gguf", size=1000, seed=1)])
    hub.add_fault(Fault("redirect_loop", origin="hub"))
    async with make_session() as s:
        with pytest.raises(TooManyRedirectsError, match="redirects"):
            await fetch_file(
                s, TransferRequest(url=hub.resolve_url("o/l", "m.gguf"), dest=tmp_path / "m")
            )
    assert files_under(tmp_path) == set()


async def test_a_redirect_off_loopback_is_refused_when_only_loopback_is_allowed(
    tmp_path: Path, raw: RawServer, session: TransferSession
) -> None:
    raw.respond = lambda req: response(302, b"", {"Location": "http://192.0.2.1/escape"})
    options: dict[str, Any] = {"allowed_hosts": frozenset({"127.0.0.1", "::1", "localhost"})}
    request = TransferRequest(url=f"{raw.url}/f", dest=tmp_path / "f", **options)
    with pytest.raises(SchemeError):
        await asyncio.wait_for(fetch_file(session, request), 5)


# -- 5. Retry-After from the download servers ----------------------------------------------------

A_YEAR = 365 * 24 * 3600


@pytest.mark.parametrize(
    "retry_after",
    [str(A_YEAR), "__date__"],
    ids=["seconds", "http-date"],
)
async def test_a_year_long_retry_after_is_capped_by_the_policy(
    hub: FakeHub, tmp_path: Path, retry_after: str
) -> None:
    if retry_after == "__date__":
        retry_after = email.utils.formatdate(time.time() + A_YEAR, usegmt=True)
    hub.add_repo("o/r", [RepoFile("m.gguf", size=1000, seed=1)])
    hub.add_fault(Fault("status", origin="cdn", status=429, retry_after=retry_after, times=1))
    async with DownloadManager(home=tmp_path / "home", settings=settings()) as m:
        with m.subscribe() as sub:
            await m.enqueue(group_of(hub, "o/r", ["m.gguf"], tmp_path / "out"))
            event = await next_event(
                sub, lambda e: isinstance(e, ev.StatusChanged) and e.status == "waiting_retry"
            )
        assert isinstance(event, ev.StatusChanged) and event.retry_at is not None
        cap = m.settings.policy.retry_after_cap
        assert cap <= 900
        assert event.retry_at - time.time() <= cap + 5
        assert event.retry_at - time.time() >= cap - 60  # the server was heard, up to the cap


async def test_a_garbage_retry_after_is_ignored_for_the_usual_backoff(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_repo("o/g", [RepoFile("m.gguf", size=1000, seed=1)])
    hub.add_fault(Fault("status", origin="cdn", status=503, retry_after="soon-ish", times=1))
    async with DownloadManager(home=tmp_path / "home", settings=settings()) as m:
        with m.subscribe() as sub:
            gid = await m.enqueue(group_of(hub, "o/g", ["m.gguf"], tmp_path / "out"))
            event = await next_event(
                sub, lambda e: isinstance(e, ev.StatusChanged) and e.status == "waiting_retry"
            )
            assert isinstance(event, ev.StatusChanged) and event.retry_at is not None
            assert event.retry_at - time.time() <= m.settings.policy.max_delay + 1
            await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
        assert (await m.group_view(gid)).status == "completed"


# -- 6. a lie that hits everyone -----------------------------------------------------------------


async def test_one_server_announcing_a_petabyte_does_not_pause_the_others(
    hub: FakeHub, tmp_path: Path, raw: RawServer
) -> None:
    raw.respond = lambda req: response(200, BODY, length=str(1 << 50))
    hub.add_repo("o/p", [RepoFile("good.gguf", size=4 * MiB, seed=3)])
    hub.add_fault(Fault("throttle", origin="cdn", rate=4 * MiB))
    paused: list[str] = []
    async with DownloadManager(home=tmp_path / "home", settings=settings()) as m:
        with m.subscribe() as sub:
            good = await m.enqueue(group_of(hub, "o/p", ["good.gguf"], tmp_path / "out"))
            liar = await m.enqueue(
                GroupRequest(
                    name="liar",
                    dest_dir=tmp_path / "out",
                    files=(FileRequest(url=f"{raw.url}/x", path="x.bin"),),
                )
            )

            async def watch() -> None:
                async for e in sub:
                    if isinstance(e, ev.StatusChanged) and e.status == "paused":
                        paused.append(e.ref)

            watcher = asyncio.create_task(watch())
            await asyncio.wait_for(m.wait([good, liar]), 20)
            watcher.cancel()
        views = {v.name: v for v in await m.snapshot()}
    assert paused == []
    assert views["liar"].status == "failed" and views["liar"].files[0].error_kind != "disk_full"
    assert views["o/p:1"].status == "completed"
