"""What a new user trips over, said in one line they can act on (issue 16): destinations that
cannot be written, disk-side errors during a transfer, gated repos and refused tokens, and
hosts that never answer. Through the real CLI against the fake hub where the CLI can reach
the case; in-process where the OS must be made to fail (see each test)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfetch.core.errors import (
    ConnectFailedError,
    DestinationError,
    LocalFileError,
    TokenRefusedError,
)
from modelfetch.core.policy import AttemptHistory, GiveUp, Retry, RetryPolicy
from modelfetch.hub import HubConfig
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.testing.samples import GATED_REPO, MIB, TEST_REPO, add_test_repos
from modelfetch.transfer import sink
from tests.test_cli import Cli, Result, assert_no_traceback

PRIVATE_REPO = "modelfetch/private-GGUF"


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        add_test_repos(fake)
        fake.add_repo(
            PRIVATE_REPO, [RepoFile("private-Q4_K_M.gguf", size=MIB // 4, seed=41)], private=True
        )
        yield fake


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture
def cli(tmp_path: Path, hub: FakeHub, pycache: Path) -> Cli:
    return Cli(tmp_path, hub, pycache)


def one_error_line(result: Result) -> str:
    assert_no_traceback(result)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "report this bug" not in result.err and "internal error" not in result.err.lower()
    return lines[0]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: nobody else takes it here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manager(tmp_path: Path, hub: FakeHub, **settings: object) -> DownloadManager:
    values: dict[str, object] = {
        "progress_interval": 0.1,
        "checkpoint_interval": 0.2,
        "policy": RetryPolicy(base_delay=0.01, max_delay=0.05),
    }
    values.update(settings)
    return DownloadManager(
        home=tmp_path / "home",
        settings=ManagerSettings(**values),  # type: ignore[arg-type]
        hub=HubConfig(hub.endpoint),
        models_dir=tmp_path / "models",
    )


# ---------------------------------------------------------------- destinations, before queuing


async def test_a_file_in_the_way_of_the_destination_is_refused_before_anything_is_queued(
    cli: Cli, hub: FakeHub, tmp_path: Path, pycache: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    under, itself = await asyncio.gather(
        cli("get", f"{TEST_REPO}:Q8_0", "--dir", str(blocker / "sub" / "models")),
        Cli(tmp_path / "second", hub, pycache)("get", f"{TEST_REPO}:Q8_0", "--dir", str(blocker)),
    )
    assert under.code == 2, (under.out, under.err)
    line = one_error_line(under)
    assert f"Cannot create {blocker / 'sub' / 'models'}" in line
    assert f"{blocker} is a file, not a folder" in line
    assert itself.code == 2, (itself.out, itself.err)
    line = one_error_line(itself)
    assert f"Cannot create {blocker / TEST_REPO}: {blocker} is a file, not a folder" in line
    assert not hub.requests(origin="cdn")
    assert await cli.ls() == {}  # nothing was queued
    assert blocker.read_text() == "not a folder\n"


async def test_a_destination_without_room_is_refused_before_anything_is_queued(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: a full disk cannot be made for real without mounting a file system, so the
    free space is what `shutil.disk_usage` (the check's only look at it) reports."""
    import shutil

    real = shutil.disk_usage

    def nearly_full(path: str | os.PathLike[str]) -> object:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr("modelfetch.destinations.shutil.disk_usage", nearly_full)
    async with manager(tmp_path, hub) as m:
        with pytest.raises(DestinationError) as caught:
            await m.add(f"{TEST_REPO}:Q8_0")
        assert await m.snapshot() == []
    message = str(caught.value)
    assert "Not enough space on " in message and "needs 2.0 MiB" in message
    assert "\n" not in message
    assert not hub.requests(origin="cdn")


@pytest.mark.parametrize(
    ("read_only", "words"),
    [
        (True, "Read-only file system; that file system is mounted read-only"),
        (False, "Permission denied; this user may not write there"),
    ],
)
def test_a_folder_that_cannot_be_created_names_the_folder_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool, words: str
) -> None:
    """Tests run as root, whom neither a mode nor (on some mounts) access(2) stops: the check's
    two looks at the folder, access(2) and the mount's read-only flag, say no here instead."""
    from modelfetch import destinations

    monkeypatch.setattr("os.access", lambda path, mode: False)
    monkeypatch.setattr(destinations, "_read_only", lambda path: read_only)
    target = tmp_path / "new" / "models" / "m.gguf"
    with pytest.raises(DestinationError) as caught:
        destinations.check_destinations([destinations.Needed(target, 10)])
    message = str(caught.value)
    assert message.startswith(f"Cannot write {tmp_path}: ") and words in message
    assert not (tmp_path / "new").exists()  # the check creates nothing


# ----------------------------------------------------------- the disk refusing, mid-transfer


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EIO])
async def test_a_disk_error_during_a_transfer_fails_that_file_once_in_words(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """In-process: tests run as root, so the OS is made to refuse at the transfer's one
    write seam (`sink.pwrite`, used for streamed, segmented and small bodies alike)."""

    def refuse(fd: int, data: object, offset: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(sink, "pwrite", refuse)
    async with manager(tmp_path, hub) as m:
        gid = await m.add(f"{TEST_REPO}:Q8_0")
        async with asyncio.timeout(20):
            await m.wait([gid])
        (f,) = (await m.group_view(gid)).files
    assert f.status == "failed"
    assert f.error_kind == "local_file"
    message = f.error_message or ""
    assert message.startswith("Cannot write ") and os.strerror(code) in message
    assert "test-Q8_0.gguf" in message  # it names the file
    assert "report this bug" not in message and "again" not in message and "\n" not in message
    # Never retried: the CDN saw the one attempt (a segmented file opens a few ranges at once).
    assert f.attempts <= 1


@pytest.mark.parametrize(
    ("code", "final"),
    [
        (errno.EACCES, True),
        (errno.EPERM, True),
        (errno.EROFS, True),
        (errno.ENOTDIR, True),
        (errno.EISDIR, True),
        (errno.EIO, True),
        (errno.ENOENT, False),  # a folder removed mid-download is made again by the next try
    ],
)
def test_the_policy_treats_disk_errors_that_cannot_heal_as_final(code: int, final: bool) -> None:
    error = LocalFileError.from_os_error(OSError(code, os.strerror(code)), "/data/m.gguf")
    for exc in (error, OSError(code, os.strerror(code), "/data/m.gguf")):
        decision = RetryPolicy().decide(exc, AttemptHistory(), now=0.0, rng=random.Random(1))
        assert isinstance(decision, GiveUp if final else Retry), (code, exc, decision)
        if final:
            assert isinstance(decision, GiveUp)
            assert "/data/m.gguf" in decision.message and os.strerror(code) in decision.message
            assert "report this bug" not in decision.message


# ------------------------------------------------------------------------ gates and tokens


async def test_a_gated_repo_names_its_model_page(cli: Cli, hub: FakeHub) -> None:
    result = await cli("get", GATED_REPO)
    assert result.code == 1, (result.out, result.err)
    line = one_error_line(result)
    assert f"{hub.endpoint}/{GATED_REPO}" in line and "HF_TOKEN" in line


async def test_a_refused_token_is_told_apart_from_no_token(
    cli: Cli, hub: FakeHub, tmp_path: Path, pycache: Path
) -> None:
    wrong, missing = await asyncio.gather(
        cli("get", f"{TEST_REPO}:Q8_0", env={"HF_TOKEN": "hf_not_a_token_the_hub_knows"}),
        Cli(tmp_path / "other", hub, pycache)("get", PRIVATE_REPO),
    )
    assert wrong.code == 1, (wrong.out, wrong.err)
    line = one_error_line(wrong)
    assert "token was refused (invalid or expired)" in line and "HF_TOKEN" in line
    assert "hf_not_a_token" not in wrong.err + wrong.out  # never the token itself
    assert missing.code == 1, (missing.out, missing.err)
    line = one_error_line(missing)
    assert "needs a Hugging Face token" in line and "set HF_TOKEN" in line
    assert "refused" not in line
    assert f"{hub.endpoint}/{PRIVATE_REPO}" in line
    assert not hub.requests(origin="cdn")


async def test_the_fake_hub_refuses_an_unknown_token_like_the_real_one(hub: FakeHub) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{hub.endpoint}/api/models/{TEST_REPO}",
            headers={"Authorization": "Bearer hf_unknown"},
        ) as response,
    ):
        body = await response.json()
    assert response.status == 401
    assert response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert "X-Error-Code" not in response.headers
    assert body == {"error": "Invalid credentials in Authorization header"}


def test_a_refused_token_on_a_transfer_says_so() -> None:
    from modelfetch.core.policy import describe

    error = TokenRefusedError(
        "HTTP 401", status=401, url="https://hf.example/acme/m/resolve/abc/m.gguf"
    )
    text = describe(error)
    assert text.startswith("The token was refused (invalid or expired) by hf.example")
    assert "https://hf.example/settings/tokens" in text and "https://hf.example/acme/m" in text


# ------------------------------------------------------------------------- unreachable hosts


async def test_a_host_that_never_answers_is_given_up_on_after_a_countdown(
    cli: Cli, hub: FakeHub, tmp_path: Path, pycache: Path
) -> None:
    """The Hub answers and redirects to a CDN where nothing listens: a few retries (the
    waiting reason counts them), then the file fails naming the host. A wrong HF_ENDPOINT is
    one line naming it (the Hub client's own three quick retries first)."""
    port = closed_port()
    hub.cdn_public_url = f"http://127.0.0.1:{port}"
    wrong = Cli(tmp_path / "wrong", hub, pycache)
    wrong.env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    result, no_hub = await asyncio.gather(
        cli("get", f"{TEST_REPO}:Q8_0"), wrong("get", f"{TEST_REPO}:Q8_0")
    )
    assert no_hub.code == 1, (no_hub.out, no_hub.err)
    line = one_error_line(no_hub)
    assert f"Cannot connect to 127.0.0.1:{port}" in line and "is HF_ENDPOINT" in line
    assert result.code == 1, (result.out, result.err)
    assert_no_traceback(result)
    assert f"connection refused by 127.0.0.1:{port} (retry 1 of 3)" in result.out
    assert "(retry 3 of 3)" in result.out
    summary = result.out[result.out.index("✗") :]
    assert f"Cannot connect to 127.0.0.1:{port}" in summary and "never answered" in summary
    assert "retry 4 of" not in result.out


async def test_a_cdn_that_served_a_file_and_then_refuses_is_retried_as_before(
    hub: FakeHub, tmp_path: Path
) -> None:
    """In-process, with a fast policy: after one file came through the Hub's redirect, a
    refused connection is a host that went down (the full retry budget), not a wrong address."""
    policy = RetryPolicy(base_delay=0.001, max_delay=0.002, max_attempts=5, refused_retries=2)
    async with manager(tmp_path, hub, policy=policy) as m:
        first = await m.add(f"{TEST_REPO}:Q8_0")
        async with asyncio.timeout(20):
            await m.wait([first])
        assert (await m.group_view(first)).status == "completed"
        hub.cdn_public_url = f"http://127.0.0.1:{closed_port()}"
        second = await m.add(f"{TEST_REPO}/mmproj-test-F16.gguf")
        async with asyncio.timeout(20):
            await m.wait([second])
        (f,) = (await m.group_view(second)).files
    assert f.status == "failed" and f.error_kind == "connect_failed"
    assert (f.error_message or "").startswith("Gave up after 5 failed attempts")
    assert "never answered" not in (f.error_message or "")


async def test_a_host_that_answered_before_is_retried_as_any_network_error() -> None:
    error = ConnectFailedError("refused", host="cdn:443", refused=True, url="https://cdn/x")
    policy = RetryPolicy(refused_retries=3, max_attempts=8)
    history = AttemptHistory()
    rng = random.Random(3)
    never: list[object] = []
    answered: list[object] = []
    for _ in range(6):
        never.append(policy.decide(error, history, now=0.0, rng=rng, host_answered=False))
        answered.append(policy.decide(error, history, now=0.0, rng=rng, host_answered=True))
        history = history.record(error, made_progress=False)
    assert [type(d) for d in never] == [Retry, Retry, Retry, GiveUp, GiveUp, GiveUp]
    assert [d.message for d in never[:3] if isinstance(d, Retry)] == [
        f"connection refused by cdn:443 (retry {n} of 3)" for n in (1, 2, 3)
    ]
    assert all(isinstance(d, Retry) for d in answered)


def test_json_of_the_new_kinds_round_trips_through_the_daemon_client() -> None:
    from modelfetch.remote import error_from_response

    rebuilt = error_from_response(
        400, {"error": {"kind": "destination", "message": "Cannot create /x: /y is a file"}}
    )
    assert isinstance(rebuilt, DestinationError) and str(rebuilt).startswith("Cannot create")
    assert json.dumps({"kind": DestinationError.kind}) == '{"kind": "destination"}'


# --------------------------------------------------------------- a client's token, to a daemon


async def test_through_a_daemon_a_client_token_travels_for_that_download_only(
    cli: Cli, hub: FakeHub
) -> None:
    """The daemon runs without a token; a client with HF_TOKEN gets a gated model through it.
    The token goes to the Hub only (never the CDN), is not in the state database nor in any
    answer of the API, and a client without it does not get the next gated model."""
    import signal

    import aiohttp

    token = "hf_client_only_token_0123456789"
    hub.grant(GATED_REPO, token)
    other = "modelfetch/gated-too-GGUF"
    hub.add_repo(other, [RepoFile("too-Q4_K_M.gguf", size=MIB // 4, seed=51)], gated=True)
    hub.grant(other, token)
    daemon = await cli.start("serve", "--port", "0")
    try:
        async with asyncio.timeout(20):
            while not (cli.home / "daemon.json").exists():
                await asyncio.sleep(0.1)
        got = await cli("get", GATED_REPO, env={"HF_TOKEN": token})
        assert got.code == 0, (got.out, got.err)
        assert (cli.models / GATED_REPO / "gated-Q4_K_M.gguf").read_bytes() == hub.content(
            GATED_REPO, "gated-Q4_K_M.gguf"
        )
        refused = await cli("get", other)  # no HF_TOKEN: the daemon's own (none) is used
        assert refused.code == 1, (refused.out, refused.err)
        assert f"{hub.endpoint}/{other}" in one_error_line(refused)

        # The daemon checks the destination before queuing too, and says so in the same line.
        blocker = cli.home.parent / "a-file"
        blocker.write_text("x")
        nowhere = await cli("get", f"{TEST_REPO}:Q8_0", "--dir", str(blocker / "models"))
        assert nowhere.code == 2, (nowhere.out, nowhere.err)
        assert f"{blocker} is a file, not a folder" in one_error_line(nowhere)

        info = json.loads((cli.home / "daemon.json").read_text())
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{info['url']}/api/downloads") as response,
        ):
            listing = await response.text()
        assert response.status == 200 and GATED_REPO in listing and token not in listing
        stored = b"".join(p.read_bytes() for p in cli.home.glob("state.db*") if p.is_file())
        assert stored and token.encode() not in stored
    finally:
        daemon.send_signal(signal.SIGTERM)
        stopped = await cli.finish(daemon, limit=20)
    assert stopped.code == 0, stopped.err
    assert token not in stopped.err + stopped.out
    to_hub = [r for r in hub.requests(origin="hub") if GATED_REPO in r.path]
    assert to_hub and all(r.authorization for r in to_hub)
    assert not any(r.authorization for r in hub.requests(origin="cdn"))
    stored = b"".join(p.read_bytes() for p in cli.home.glob("state.db*") if p.is_file())
    assert token.encode() not in stored


# --------------------------------------------------------------------------- the dashboard


async def test_the_dashboard_names_a_gated_repo_page_as_a_link(tmp_path: Path) -> None:
    """Headless Chromium, as tests/test_dashboard.py drives it: the add box's error for a
    gated repo is one line with its model page as a link (it used to end in "null")."""
    from tests.test_dashboard import CHROMIUM, LAUNCH_ARGS
    from tests.test_server_api import run_daemon

    playwright = pytest.importorskip("playwright.async_api")
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    async with run_daemon(tmp_path) as daemon, playwright.async_playwright() as p:
        repo = "acme/gated-GGUF"
        daemon.hub.add_repo(repo, [RepoFile("g-Q4_K_M.gguf", size=1000, seed=7)], gated=True)
        page_url = f"{daemon.hub.endpoint}/{repo}"
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(daemon.url)
            await page.fill("#add-spec", repo)
            await page.click("#add-button")
            message = page.locator("#add-message")
            await playwright.expect(message).to_contain_text("is gated")
            text = await message.inner_text()
            link = message.locator("a")
            assert await link.get_attribute("href") == page_url
            assert await link.inner_text() == page_url
            assert "null" not in text and "Accepted forms" not in text
            assert await message.locator("pre").count() == 0
            assert await daemon.manager.snapshot() == []  # nothing was queued
        finally:
            await browser.close()
