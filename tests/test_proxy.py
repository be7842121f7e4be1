"""Downloads through a real http proxy (tinyproxy on loopback): plain http forwarded, https
tunnelled with CONNECT, with and without proxy credentials; NO_PROXY; the token's rules."""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from modelfetch.core.errors import AuthRequiredError, NetworkError, ProxyError
from modelfetch.core.network import NetworkSettings
from modelfetch.core.proxy import ProxyRules
from modelfetch.hub import HubClient, HubConfig, make_api_session
from modelfetch.testing.fakehub import FakeHub, RepoFile
from modelfetch.transfer import Credentials, TransferRequest, fetch_file, make_session
from tests.proxies import Tinyproxy, Wiretap, run_tinyproxy

TOKEN = "hf_proxytestTOKEN0123456789"
BODY = os.urandom(3 << 20)
DIGEST = hashlib.sha256(BODY).hexdigest()


@dataclass
class Origin:
    """A file server on loopback that remembers the headers of every request it got."""

    url: str
    seen: list[dict[str, str]] = field(default_factory=list)


async def _origin(tmp_path: Path, context: ssl.SSLContext | None) -> AsyncIterator[Origin]:
    source = tmp_path / "source.bin"
    source.write_bytes(BODY)
    origin = Origin("")

    async def serve(request: web.Request) -> web.StreamResponse:
        origin.seen.append(dict(request.headers))
        return web.FileResponse(source)

    app = web.Application()
    app.router.add_get("/{name:.+}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    origin.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    try:
        yield origin
    finally:
        await runner.cleanup()


@pytest.fixture
async def http_origin(tmp_path: Path) -> AsyncIterator[Origin]:
    async for origin in _origin(tmp_path, None):
        yield origin


@pytest.fixture
async def https_origin(tmp_path: Path, tls_cert: tuple[Path, Path]) -> AsyncIterator[Origin]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_cert)
    async for origin in _origin(tmp_path, context):
        yield origin


@pytest.fixture
def proxy(tmp_path: Path) -> AsyncIterator[Tinyproxy]:
    running = run_tinyproxy(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def auth_proxy(tmp_path: Path) -> AsyncIterator[Tinyproxy]:
    running = run_tinyproxy(
        tmp_path, auth=("alice", "s3cret_pass-1")
    )  # tinyproxy takes [\w.-] only
    yield running
    running.stop()


def through(proxy_url: str, *, no_proxy: str = "", ca: Path | None = None) -> NetworkSettings:
    env = {"HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url, "NO_PROXY": no_proxy}
    return NetworkSettings.from_env(env, ca_bundle=str(ca) if ca else None)


async def download(network: NetworkSettings, url: str, dest: Path, **extra: object) -> None:
    async with make_session(network=network) as session:
        request = TransferRequest(url=url, dest=dest, expected_sha256=DIGEST, **extra)  # type: ignore[arg-type]
        result = await fetch_file(session, request)
    assert result.verified and dest.read_bytes() == BODY


async def test_plain_http_goes_through_the_proxy(
    proxy: Tinyproxy, http_origin: Origin, tmp_path: Path
) -> None:
    await download(through(proxy.url), f"{http_origin.url}/model.gguf", tmp_path / "a.gguf")
    assert all("tinyproxy" in seen.get("Via", "") for seen in http_origin.seen)
    assert "/model.gguf" in proxy.log_text()


async def test_https_is_tunnelled_with_connect_and_verified_against_the_ca_bundle(
    proxy: Tinyproxy, https_origin: Origin, tls_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    tap = await Wiretap(proxy.port).start()
    try:
        network = through(tap.url, ca=tls_cert[0])
        await download(network, f"{https_origin.url}/secret/model.gguf", tmp_path / "b.gguf")
    finally:
        await tap.close()
    port = https_origin.url.rsplit(":", 1)[1]
    assert f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode() in tap.sent
    assert b"/secret/model.gguf" not in tap.sent  # the request itself is inside TLS
    assert https_origin.seen and all("Via" not in seen for seen in https_origin.seen)
    assert "CONNECT" in proxy.log_text()


async def test_without_the_ca_bundle_the_tunnelled_origin_is_not_trusted(
    proxy: Tinyproxy, https_origin: Origin, tmp_path: Path
) -> None:
    with pytest.raises(NetworkError, match="certificate verify failed"):
        await download(through(proxy.url), f"{https_origin.url}/f.gguf", tmp_path / "c.gguf")
    assert not (tmp_path / "c.gguf").exists()


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_proxy_credentials_from_the_url_are_sent_to_the_proxy_only(
    auth_proxy: Tinyproxy,
    http_origin: Origin,
    https_origin: Origin,
    tls_cert: tuple[Path, Path],
    tmp_path: Path,
    scheme: str,
) -> None:
    origin = http_origin if scheme == "http" else https_origin
    network = through(auth_proxy.url, ca=tls_cert[0])
    await download(network, f"{origin.url}/f.gguf", tmp_path / "d.gguf")
    assert origin.seen and all("Proxy-Authorization" not in seen for seen in origin.seen)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_proxy_that_wants_credentials_fails_at_once_and_names_no_secret(
    auth_proxy: Tinyproxy,
    http_origin: Origin,
    https_origin: Origin,
    tls_cert: tuple[Path, Path],
    tmp_path: Path,
    scheme: str,
) -> None:
    origin = http_origin if scheme == "http" else https_origin
    url, dest = f"{origin.url}/f", tmp_path / "e"
    with pytest.raises(ProxyError) as caught:
        await download(through(auth_proxy.bare_url, ca=tls_cert[0]), url, dest)
    assert caught.value.status == 407
    assert "407" in str(caught.value) and "credentials" in str(caught.value)
    # Wrong credentials: tinyproxy answers 401 (not 407), for plain http as if it were the
    # origin; whatever it is taken for, the attempt ends and no secret is in the message.
    wrong = auth_proxy.url.replace("s3cret_pass-1", "wrong_secret")
    with pytest.raises(ProxyError if scheme == "https" else AuthRequiredError) as refused:
        await download(through(wrong, ca=tls_cert[0]), url, dest)
    assert "wrong_secret" not in str(refused.value) and "s3cret" not in str(refused.value)
    assert not origin.seen and not dest.exists()


async def test_no_proxy_sends_a_host_directly(
    proxy: Tinyproxy, http_origin: Origin, tmp_path: Path
) -> None:
    network = through(proxy.url, no_proxy="localhost,127.0.0.0/8")
    await download(network, f"{http_origin.url}/f.gguf", tmp_path / "f.gguf")
    assert http_origin.seen and all("Via" not in seen for seen in http_origin.seen)
    assert "/f.gguf" not in proxy.log_text()


async def test_a_proxy_that_is_down_is_a_network_error_naming_the_proxy(
    http_origin: Origin, tmp_path: Path
) -> None:
    from tests.proxies import _free_port

    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(NetworkError, match=f"cannot connect to proxy 127.0.0.1:{dead[-5:]}"):
        await download(through(dead), f"{http_origin.url}/f", tmp_path / "g")


async def test_the_token_is_never_sent_through_a_proxy_in_the_clear(
    proxy: Tinyproxy, http_origin: Origin, tmp_path: Path
) -> None:
    tap = await Wiretap(proxy.port).start()
    try:
        credentials = Credentials(TOKEN, http_origin.url)
        await download(
            through(tap.url), f"{http_origin.url}/f", tmp_path / "h", credentials=credentials
        )
    finally:
        await tap.close()
    assert tap.sent and TOKEN.encode() not in tap.sent
    assert all("Authorization" not in seen for seen in http_origin.seen)


async def test_the_token_travels_inside_the_tunnel_to_its_own_origin(
    proxy: Tinyproxy, https_origin: Origin, tls_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    tap = await Wiretap(proxy.port).start()
    try:
        network = through(tap.url, ca=tls_cert[0])
        credentials = Credentials(TOKEN, https_origin.url)
        await download(network, f"{https_origin.url}/f", tmp_path / "i", credentials=credentials)
    finally:
        await tap.close()
    assert TOKEN.encode() not in tap.sent
    assert [seen.get("Authorization") for seen in https_origin.seen] == [f"Bearer {TOKEN}"] * len(
        https_origin.seen
    )


async def test_the_hub_api_goes_through_the_proxy(proxy: Tinyproxy, hub: FakeHub) -> None:
    hub.add_repo("org/model", [RepoFile("model.gguf", b"x" * 100)])
    rules = ProxyRules.from_env({"HTTP_PROXY": proxy.url})
    async with make_api_session(network=NetworkSettings(rules)) as session:
        client = HubClient(session, HubConfig(endpoint=hub.endpoint), proxies=rules)
        sha = await client.revision_sha("org/model")
    assert len(sha) == 40
    assert "/api/models/org/model/revision/main" in proxy.log_text()


async def test_the_hub_api_keeps_the_token_from_a_plain_http_proxy(
    proxy: Tinyproxy, hub: FakeHub
) -> None:
    hub.add_repo("org/private", [RepoFile("model.gguf", b"x" * 100)], private=True)
    hub.tokens.add(TOKEN)
    tap = await Wiretap(proxy.port).start()
    rules = ProxyRules.from_env({"HTTP_PROXY": tap.url})
    try:
        async with make_api_session(network=NetworkSettings(rules)) as session:
            config = HubConfig(endpoint=hub.endpoint, token=TOKEN)
            client = HubClient(session, config, proxies=rules)
            with pytest.raises(AuthRequiredError):
                await client.revision_sha("org/private")
    finally:
        await tap.close()
    assert tap.sent and TOKEN.encode() not in tap.sent


async def test_a_whole_hub_download_goes_through_the_proxy(
    proxy: Tinyproxy, hub: FakeHub, tmp_path: Path
) -> None:
    from modelfetch.manager import DownloadManager, ManagerSettings

    shards = [
        RepoFile(f"model-Q4_K_M-0000{i}-of-00002.gguf", content=os.urandom(300_000)) for i in (1, 2)
    ]
    hub.add_repo("org/model-GGUF", shards)
    settings = ManagerSettings(network=through(proxy.url))
    models = tmp_path / "models"
    async with DownloadManager(
        home=tmp_path / "home", settings=settings, hub=HubConfig(hub.endpoint), models_dir=models
    ) as manager:
        group = await manager.add("org/model-GGUF")
        await manager.wait([group])
    for shard in shards:
        assert (models / "org" / "model-GGUF" / shard.path).read_bytes() == shard.content
    log = proxy.log_text()
    assert "/api/models/org/model-GGUF" in log  # the Hub API
    assert "/org/model-GGUF/resolve/" in log  # the resolve hop
    assert "/cdn/org/model-GGUF/" in log  # and the CDN it redirects to
