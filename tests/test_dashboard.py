"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
add the fake Hub's sample model through the add box, watch its bar move, pause, resume, see it
complete, and save a screenshot for the README (docs/dashboard.png)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from modelfetch.core.policy import RetryPolicy
from modelfetch.manager import DownloadManager
from modelfetch.testing.fakehub import SAMPLE_REPO, Fault

from .test_server_api import Daemon, fast_settings, run_daemon

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KiB = 1 << 10

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFETCH_TOKEN", raising=False)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    # Slow retries, so that the screenshot catches a countdown.
    settings = fast_settings(progress_interval=0.2, policy=RetryPolicy(base_delay=30, max_delay=30))
    async with run_daemon(tmp_path, settings=settings) as running:
        yield running


@contextlib.asynccontextmanager
async def live_page(url: str) -> AsyncIterator[tuple[Page, list[str]]]:
    """Headless Chromium on the dashboard at `url`, connected (the page's own errors listed)."""
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1180, "height": 860})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(url)
            await playwright_api.expect(page.locator("#connection")).to_have_text("live")
            yield page, problems
        finally:
            await browser.close()


async def bar_width(card: Locator) -> float:
    fill = card.locator(":scope > .bar .bar-fill")
    text = await fill.evaluate("e => e.style.width")
    return float(text.rstrip("%") or 0)


async def test_add_watch_pause_resume_complete(daemon: Daemon, tmp_path: Path) -> None:
    # Slow enough to watch (about 6 s for the 5 MiB model), fast once resumed.
    daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=400 * KiB))
    expect = playwright_api.expect
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1180, "height": 860})
            problems: list[str] = []
            foreign: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith((daemon.url, "data:"))
                    else foreign.append(request.url)
                ),
            )
            await page.goto(daemon.url)
            await expect(page.locator("#connection")).to_have_text("live")
            await expect(page.locator("#empty")).to_be_visible()

            # Add the sample model through the add box.
            await page.fill("#add-spec", SAMPLE_REPO)
            await page.fill("#add-quant", "Q4_K_M")
            await page.click("#add-button")
            await expect(page.locator("#add-message")).to_contain_text("Added")
            card = page.locator('.card[data-id="1"]')
            await expect(card.locator(".name")).to_have_text(f"{SAMPLE_REPO}:Q4_K_M")
            await expect(card.locator(".file")).to_have_count(2)

            # Watch the bar move: its width grows while bytes arrive, pushed by the stream.
            await expect(
                page.locator('section[data-section="active"] .card[data-id="1"]')
            ).to_be_visible()
            first = 0.0
            async with asyncio.timeout(10):
                while (first := await bar_width(card)) <= 0:
                    await asyncio.sleep(0.05)
                while await bar_width(card) <= first:
                    await asyncio.sleep(0.05)
            await expect(card.locator(".meta")).to_contain_text("/s")

            # Pause: the card moves to the paused section and says so.
            await card.locator('button[data-action="pause"]').click()
            await expect(card.locator(".state")).to_have_text("paused")
            await expect(
                page.locator('section[data-section="paused"] .card[data-id="1"]')
            ).to_be_visible()
            await expect(card.locator(".file-state").first).to_have_text("paused")
            paused_at = await bar_width(card)
            assert 0 < paused_at < 100
            await asyncio.sleep(0.5)
            assert await bar_width(card) == paused_at  # nothing moves while paused

            # Resume: it completes.
            daemon.hub.clear_faults()
            await card.locator('button[data-action="resume"]').click()
            await expect(
                page.locator('section[data-section="done"] .card[data-id="1"]')
            ).to_be_visible(timeout=20_000)
            await expect(card.locator(".state")).to_have_text("done")
            await expect(card.locator(".file-state")).to_have_text(["done", "done"])
            assert await bar_width(card) == 100
            view = await daemon.manager.group_view(1)
            assert view.status == "completed"

            await show_other_states(daemon, page)
            await expect(card.locator(".state")).to_have_text("done")
            # The README's picture is refreshed on request only, so a test run never dirties the
            # work tree: MODELFETCH_UPDATE_SCREENSHOT=1 pytest tests/test_dashboard.py
            shot = (
                SCREENSHOT if os.environ.get("MODELFETCH_UPDATE_SCREENSHOT") else tmp_path / "d.png"
            )
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # The refused (absurd) speed limit is the one failed request made on purpose.
            expected_refusal = "status of 422"
            assert [p for p in problems if expected_refusal not in p] == []
            assert foreign == []  # no CDN, no web fonts: everything comes from the daemon
        finally:
            await browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


async def show_other_states(daemon: Daemon, page: Page) -> None:
    """More of the queue for the screenshot: one waiting to retry after a reset connection, one
    downloading, one paused and one queued behind them."""
    expect = playwright_api.expect
    loc = page.locator
    manager = daemon.manager
    # The limit fields reach the engine, and the page shows what the daemon answered.
    await page.fill("#rate-limit", "2000000000")
    await page.click('#rate-limit-form button[type="submit"]')
    await expect(loc("#limits-message")).to_contain_text("Not applied: body.rate_limit")
    await page.fill("#rate-limit", "25")
    await page.click('#rate-limit-form button[type="submit"]')
    await expect(loc("#limits-message")).to_have_text("Speed limit: 25.0 MB/s over all downloads.")
    assert manager.settings.rate_limit == 25_000_000
    await page.fill("#max-active", "1")
    await page.click('#max-active-form button[type="submit"]')
    await expect(loc("#limits-message")).to_have_text("Up to 1 file at once.")
    assert manager.settings.max_active == 1
    daemon.hub.add_fault(Fault("reset", path="mmproj", origin="any"))
    retrying = await manager.add(f"{SAMPLE_REPO}/mmproj-tiny-F16.gguf")
    await expect(loc(f'.card[data-id="{retrying}"] .state')).to_contain_text("retrying in")
    daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=512 * KiB))
    active = await manager.add(SAMPLE_REPO, quant="Q8_0")
    await expect(loc(f'section[data-section="active"] .card[data-id="{active}"]')).to_be_visible()
    paused = await manager.add(f"{SAMPLE_REPO}/config.json")
    await manager.pause(paused)
    queued = await manager.add(f"{SAMPLE_REPO}/README.md")
    await expect(loc(f'.card[data-id="{paused}"] .state')).to_have_text("paused")
    await expect(loc(f'.card[data-id="{queued}"] .state')).to_contain_text("queued #")
    async with asyncio.timeout(10):
        while await bar_width(loc(f'.card[data-id="{active}"]')) < 30:
            await asyncio.sleep(0.1)


async def test_an_active_file_shows_the_host_that_holds_it(tmp_path: Path) -> None:
    """On a queue shared by workers, a small label names the host running an active file. The
    daemon runs one host's queue here, so the holder is planted where a fleet sync puts it."""
    holder = "gpu-07/4242/a1b2c3"

    def plant(manager: DownloadManager) -> None:
        manager._holders[(1, 1)] = holder

    expect = playwright_api.expect
    async with run_daemon(tmp_path, settings=fast_settings(), manager_setup=plant) as daemon:
        daemon.hub.add_fault(Fault("throttle", origin="cdn", rate=256 * KiB))
        async with live_page(daemon.url) as (page, problems):
            held = await daemon.manager.add(f"{SAMPLE_REPO}/mmproj-tiny-F16.gguf")
            label = page.locator(f'.card[data-id="{held}"] .file-worker')
            await expect(label).to_be_visible()
            await expect(label).to_have_text("on gpu-07")
            await expect(label).to_have_attribute("title", f"held by worker {holder}")
            daemon.hub.clear_faults()
            card = page.locator(f'.card[data-id="{held}"]')
            await expect(card.locator(".state")).to_have_text("done", timeout=20_000)
            await expect(label).to_be_hidden()  # a finished file is held by no one
            await expect(card.locator(".file-state")).to_have_text("done")
            assert problems == []


async def test_the_header_says_what_the_hub_mirror_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file pulled through the mirror by a real huggingface_hub client is counted in the
    header: what the mirror holds, and how much."""
    from huggingface_hub import hf_hub_download

    from modelfetch.manager import ManagerSettings
    from modelfetch.testing.fakehub import FakeHub, RepoFile

    from .mirror_env import in_thread, running_mirror

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    expect = playwright_api.expect
    settings = ManagerSettings(allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    async with FakeHub() as hub:
        hub.add_repo("team/m-GGUF", [RepoFile("m-Q4_K_M.gguf", size=3 * (1 << 20), seed=2)])
        async with (
            running_mirror(hub, tmp_path / "mirror", settings=settings) as mirror,
            live_page(mirror.endpoint) as (page, problems),
        ):
            await expect(page.locator("#totals")).not_to_contain_text("mirror")
            path = await in_thread(
                hf_hub_download,
                "team/m-GGUF",
                "m-Q4_K_M.gguf",
                endpoint=mirror.endpoint,
                cache_dir=tmp_path / "client",
            )
            assert Path(path).read_bytes() == hub.content("team/m-GGUF", "m-Q4_K_M.gguf")
            await expect(page.locator("#totals")).to_have_text("mirror holds 1 file, 3.0 MiB")
            assert problems == []


async def test_a_list_of_several_pages_with_a_change_while_they_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's snapshot in pages of 2 (5 downloads: 3 pages); one download on the first
    page is cancelled while the second is read, one on the last page too. The page shows all 5
    and both as cancelled: the events after the snapshot apply after its last page."""
    from modelfetch.server import pages as server_pages
    from modelfetch.server.pages import PageCache

    from .test_server_sse_pages import queue_paused

    monkeypatch.setattr(server_pages, "PAGE_SIZE", 2)
    expect = playwright_api.expect
    async with run_daemon(tmp_path) as daemon:
        ids = await queue_paused(daemon, 5)
        real = PageCache._read
        changed: list[int | None] = []

        async def change_then_read(
            self: PageCache, after: int | None, step: int
        ) -> server_pages.Page:
            if after == ids[1] and not changed:
                changed.append(after)
                await daemon.manager.cancel(ids[0])
                await daemon.manager.cancel(ids[4])
            return await real(self, after, step)

        monkeypatch.setattr(PageCache, "_read", change_then_read)
        async with live_page(daemon.url) as (page, problems):
            await expect(page.locator(".card")).to_have_count(5)
            done = page.locator('section[data-section="done"] .card')
            await expect(done).to_have_count(2)
            for gid in (ids[0], ids[4]):
                await expect(page.locator(f'.card[data-id="{gid}"] .state')).to_have_text(
                    "cancelled"
                )
            paused = page.locator('section[data-section="paused"] .card')
            await expect(paused).to_have_count(3)
            assert changed == [ids[1]]
            assert problems == []
