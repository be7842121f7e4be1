"""Models from the Hub through the manager: specs, quant choice, shard sets, pinning, layouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelfetch.core import events as ev
from modelfetch.core.errors import AuthRequiredError, GatedError, NotFoundError, SpecError
from modelfetch.core.policy import RetryPolicy
from modelfetch.hub import HubConfig
from modelfetch.manager import DownloadManager, ManagerSettings
from modelfetch.testing.fakehub import FakeHub, Fault, RepoFile

from .conftest import next_event

MiB = 1 << 20


def manager(
    tmp_path: Path, hub: FakeHub, token: str | None = None, **kw: object
) -> DownloadManager:
    settings = ManagerSettings(
        progress_interval=0.1, checkpoint_interval=0.2, policy=RetryPolicy(base_delay=0.05)
    )
    for name, value in kw.items():
        setattr(settings, name, value)
    return DownloadManager(
        home=tmp_path / "home",
        settings=settings,
        hub=HubConfig(hub.endpoint, token),
        models_dir=tmp_path / "models",
    )


def sharded(name: str, quant: str, count: int) -> list[str]:
    return [f"{name}-{quant}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def model_repo(hub: FakeHub, repo: str = "acme/Llama-GGUF", **kw: bool) -> dict[str, list[str]]:
    """A repo like the real ones: a sharded quant, single-file quants, a UD quant, an mmproj,
    and small non-LFS files."""
    layout = {
        "Q4_K_M": sharded("Llama", "Q4_K_M", 3),
        "Q8_0": ["Llama-Q8_0.gguf"],
        "F16": ["Llama-F16.gguf"],
        "UD-Q4_K_M": ["Llama-UD-Q4_K_M.gguf"],
    }
    files = [
        RepoFile(p, size=MiB + n * 4096, seed=n)
        for n, p in enumerate((p for paths in layout.values() for p in paths), start=1)
    ]
    files += [
        RepoFile("mmproj-Llama-F16.gguf", size=MiB // 2, seed=99),
        RepoFile("config.json", content=b'{"architectures": ["LlamaForCausalLM"]}\n'),
        RepoFile("README.md", content=b"# Llama GGUF\n"),
    ]
    hub.add_repo(repo, files, **kw)
    return layout


async def run(m: DownloadManager, spec: str, **options: object) -> int:
    gid = await m.add(spec, **options)  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        await m.wait([gid])
    return gid


async def test_a_sharded_quant_arrives_byte_exact_in_the_plain_layout(
    hub: FakeHub, tmp_path: Path
) -> None:
    layout = model_repo(hub)
    async with manager(tmp_path, hub) as m:
        gid = await run(m, "acme/Llama-GGUF:Q4_K_M")
        view = await m.group_view(gid)
    assert view.name == "acme/Llama-GGUF:Q4_K_M" and view.status == "completed"
    assert [f.name for f in view.files] == layout["Q4_K_M"]  # no mmproj, no other quant
    root = tmp_path / "models" / "acme" / "Llama-GGUF"
    for path in layout["Q4_K_M"]:
        assert (root / path).read_bytes() == hub.content("acme/Llama-GGUF", path)
    assert sorted(p.name for p in root.iterdir()) == sorted(layout["Q4_K_M"])
    assert (
        view.downloaded
        == view.total
        == sum(hub.file("acme/Llama-GGUF", p).size for p in layout["Q4_K_M"])
    )


async def test_without_a_quant_the_default_preference_chooses(hub: FakeHub, tmp_path: Path) -> None:
    model_repo(hub)
    async with manager(tmp_path, hub) as m:
        gid = await run(m, "acme/Llama-GGUF")
        assert (await m.group_view(gid)).name == "acme/Llama-GGUF:Q4_K_M"


async def test_ud_quants_are_distinct_from_plain_ones(hub: FakeHub, tmp_path: Path) -> None:
    model_repo(hub)
    async with manager(tmp_path, hub) as m:
        ud = await run(m, "acme/Llama-GGUF:ud-q4_k_m")
        plain = await run(m, "acme/Llama-GGUF", quant="Q4_K_M")
        assert [f.name for f in (await m.group_view(ud)).files] == ["Llama-UD-Q4_K_M.gguf"]
        assert len((await m.group_view(plain)).files) == 3


async def test_extra_files_by_pattern_and_single_files_by_path(
    hub: FakeHub, tmp_path: Path
) -> None:
    model_repo(hub)
    async with manager(tmp_path, hub) as m:
        gid = await run(m, "acme/Llama-GGUF:Q8_0", include=["mmproj-*", "config.json"])
        names = [f.name for f in (await m.group_view(gid)).files]
        assert names == ["Llama-Q8_0.gguf", "config.json", "mmproj-Llama-F16.gguf"]
        one = await run(m, "https://huggingface.co/acme/Llama-GGUF/blob/main/README.md")
        assert [f.name for f in (await m.group_view(one)).files] == ["README.md"]
    root = tmp_path / "models" / "acme" / "Llama-GGUF"
    assert (root / "config.json").read_bytes() == hub.content("acme/Llama-GGUF", "config.json")
    assert (root / "README.md").read_bytes() == b"# Llama GGUF\n"


async def test_a_misspelled_quant_lists_what_is_available(hub: FakeHub, tmp_path: Path) -> None:
    model_repo(hub)
    async with manager(tmp_path, hub) as m:
        with pytest.raises(SpecError) as caught:
            await m.add("acme/Llama-GGUF:Q5_K_M")
        assert "Q4_K_M" in str(caught.value) and "3 shards" in str(caught.value)
        assert await m.snapshot() == []


async def test_a_missing_shard_is_reported_before_any_byte_moves(
    hub: FakeHub, tmp_path: Path
) -> None:
    paths = sharded("Gap", "Q4_K_M", 3)
    hub.add_repo("acme/Gap-GGUF", [RepoFile(paths[0], size=MiB), RepoFile(paths[2], size=MiB)])
    async with manager(tmp_path, hub) as m:
        with pytest.raises(SpecError, match="00002-of-00003"):
            await m.add("acme/Gap-GGUF:Q4_K_M")
    assert hub.requests(path_contains="/resolve/") == []
    assert hub.requests(origin="cdn") == []


async def test_every_file_comes_from_the_commit_pinned_at_the_start(
    hub: FakeHub, tmp_path: Path
) -> None:
    layout = model_repo(hub)
    first = hub.file("acme/Llama-GGUF", layout["Q4_K_M"][0]).commit
    hub.add_fault(Fault("throttle", origin="cdn", rate=2 * MiB))
    async with manager(tmp_path, hub, max_active=1) as m:
        with m.subscribe() as sub:
            gid = await m.add("acme/Llama-GGUF:Q4_K_M")
            await next_event(sub, lambda e: isinstance(e, ev.FileProgress) and e.downloaded > 0)
            # main moves mid-download: every shard gets new bytes in a new commit
            hub.commit(
                "acme/Llama-GGUF",
                [RepoFile(p, size=MiB, seed=1000 + n) for n, p in enumerate(layout["Q4_K_M"])],
            )
            hub.clear_faults()
            await next_event(sub, lambda e: isinstance(e, ev.GroupFinished), timeout=30)
        assert (await m.group_view(gid)).status == "completed"
    root = tmp_path / "models" / "acme" / "Llama-GGUF"
    for path in layout["Q4_K_M"]:
        assert (root / path).read_bytes() == hub.content("acme/Llama-GGUF", path, revision=first)
    resolves = hub.requests(origin="hub", path_contains="/resolve/")
    assert resolves and all(f"/resolve/{first}/" in r.path for r in resolves)


@pytest.mark.parametrize(
    ("kind", "token", "error", "words"),
    [
        ("missing", None, NotFoundError, "not found"),
        ("private", None, AuthRequiredError, "HF_TOKEN"),
        ("gated", None, GatedError, "accept its terms"),
        ("gated", "hf_ok", GatedError, "accept its terms"),
    ],
)
async def test_not_found_private_and_gated_fail_before_anything_is_queued(
    hub: FakeHub,
    tmp_path: Path,
    kind: str,
    token: str | None,
    error: type[Exception],
    words: str,
) -> None:
    if kind != "missing":
        model_repo(hub, private=kind == "private", gated=kind == "gated")
    hub.tokens.add("hf_ok")
    async with manager(tmp_path, hub, token=token) as m:
        with pytest.raises(error) as caught:
            await m.add("acme/Llama-GGUF:Q8_0")
        assert words in str(caught.value)
        assert "hf_ok" not in str(caught.value)
        assert await m.snapshot() == []
    assert hub.requests(origin="cdn") == []


async def test_a_granted_token_downloads_a_gated_repo_and_never_reaches_the_cdn(
    hub: FakeHub, tmp_path: Path
) -> None:
    layout = model_repo(hub, gated=True)
    hub.grant("acme/Llama-GGUF", "hf_ok")
    async with manager(tmp_path, hub, token="hf_ok") as m:
        gid = await run(m, "acme/Llama-GGUF:Q8_0")
        assert (await m.group_view(gid)).status == "completed"
        state = (tmp_path / "home" / "state.db").read_bytes()
    assert b"hf_ok" not in state
    assert all(r.authorization for r in hub.requests(origin="hub"))
    assert not any(r.authorization for r in hub.requests(origin="cdn"))
    path = layout["Q8_0"][0]
    assert (tmp_path / "models" / "acme" / "Llama-GGUF" / path).read_bytes() == hub.content(
        "acme/Llama-GGUF", path
    )


async def test_the_hf_cache_layout_is_read_back_by_huggingface_hub_offline(
    hub: FakeHub, tmp_path: Path
) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    layout = model_repo(hub)
    cache = tmp_path / "hf-cache"
    async with manager(tmp_path, hub) as m:
        await run(
            m, "acme/Llama-GGUF:Q4_K_M", layout="hf-cache", models_dir=cache, include=["*.json"]
        )
    commit = hub.file("acme/Llama-GGUF", "config.json").commit
    repo_dir = cache / "models--acme--Llama-GGUF"
    assert (repo_dir / "refs" / "main").read_text() == commit
    for path in [*layout["Q4_K_M"], "config.json"]:
        found = await asyncio.to_thread(
            huggingface_hub.try_to_load_from_cache, "acme/Llama-GGUF", path, cache_dir=cache
        )
        assert isinstance(found, str), path
        assert Path(found).read_bytes() == hub.content("acme/Llama-GGUF", path)
        local = await asyncio.to_thread(
            huggingface_hub.hf_hub_download,
            "acme/Llama-GGUF",
            path,
            cache_dir=cache,
            local_files_only=True,
        )
        assert Path(local).resolve() == Path(found).resolve()
        assert (repo_dir / "snapshots" / commit / path).is_symlink()
    info = hub.file("acme/Llama-GGUF", layout["Q4_K_M"][0])
    assert (repo_dir / "blobs" / info.sha256).is_file()
    assert not list(repo_dir.rglob("*.part"))


async def test_a_file_already_present_and_verified_is_not_fetched_again(
    hub: FakeHub, tmp_path: Path
) -> None:
    model_repo(hub)
    async with manager(tmp_path, hub) as m:
        gid = await run(m, "acme/Llama-GGUF:Q4_K_M")
        await m.forget(gid)
        fetched = len(hub.requests(origin="cdn"))
        with m.subscribe() as sub:
            again = await m.add("acme/Llama-GGUF:Q4_K_M")
            finished = await next_event(sub, lambda e: isinstance(e, ev.GroupFinished))
        assert isinstance(finished, ev.GroupFinished) and finished.completed == 3
        assert again != gid
    assert len(hub.requests(origin="cdn")) == fetched


async def test_aggregate_progress_is_continuous_and_ends_at_exactly_the_total(
    hub: FakeHub, tmp_path: Path
) -> None:
    layout = model_repo(hub)
    hub.add_fault(Fault("throttle", origin="cdn", rate=MiB))
    total = sum(hub.file("acme/Llama-GGUF", p).size for p in layout["Q4_K_M"])
    progress: list[ev.GroupProgress] = []
    async with manager(tmp_path, hub, max_active=1) as m:
        with m.subscribe() as sub:
            await m.add("acme/Llama-GGUF:Q4_K_M")
            async with asyncio.timeout(30):
                async for e in sub:
                    if isinstance(e, ev.GroupProgress):
                        progress.append(e)
                    if isinstance(e, ev.GroupFinished):
                        break
    downloaded = [p.downloaded for p in progress]
    assert downloaded == sorted(downloaded)  # never goes backwards across shard boundaries
    assert all(p.total == total for p in progress)
    assert downloaded[-1] == total
    assert any(p.speed is not None for p in progress)
    assert all(p.speed is None or p.speed >= 0 for p in progress)
