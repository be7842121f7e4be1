"""core/spec.py: every accepted request form, the malformed ones, and URL file names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfetch.core.errors import SpecError
from modelfetch.core.quant import parse_quant_token
from modelfetch.core.spec import (
    ACCEPTED_FORMS,
    HubSpec,
    Spec,
    UrlSpec,
    filename_from_url,
    parse_spec,
    validate_repo_id,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
R = "unsloth/Qwen3-8B-GGUF"
LOCAL = "http://127.0.0.1:8123"

ACCEPTED: list[tuple[str, Spec]] = [
    # bare repo ids
    (R, HubSpec(R)),
    ("  unsloth/Qwen3-8B-GGUF \n", HubSpec(R)),
    ("a/b", HubSpec("a/b")),
    ("Org_1/model.v2_final", HubSpec("Org_1/model.v2_final")),
    ("_a_/_b_", HubSpec("_a_/_b_")),
    (f"{R}/", HubSpec(R)),
    # quants
    (f"{R}:Q4_K_M", HubSpec(R, quant="Q4_K_M")),
    (f"{R}:q4_k_m", HubSpec(R, quant="Q4_K_M")),
    (f"{R}:UD-Q4_K_M", HubSpec(R, quant="UD-Q4_K_M")),
    (f"{R}:ud_q6_k", HubSpec(R, quant="UD-Q6_K")),
    (f"{R}:UD-Q4_K_XL", HubSpec(R, quant="Q4_K_XL")),
    (f"{R}:fp16", HubSpec(R, quant="F16")),
    (f"{R}:BF16", HubSpec(R, quant="BF16")),
    # revisions
    (f"{R}@v1.0", HubSpec(R, revision="v1.0")),
    (f"{R}@v1.0:Q4_K_M", HubSpec(R, revision="v1.0", quant="Q4_K_M")),
    (f"{R}@{SHA}", HubSpec(R, revision=SHA)),
    (f"{R}@{SHA}:Q8_0", HubSpec(R, revision=SHA, quant="Q8_0")),
    (f"{R}@refs%2Fpr%2F3", HubSpec(R, revision="refs/pr/3")),
    (f"{R}@refs/pr/3", HubSpec(R, revision="refs/pr/3")),
    (f"{R}@refs/pr/3:Q4_K_M", HubSpec(R, revision="refs/pr/3", quant="Q4_K_M")),
    (f"{R}@refs/pr/3/a.gguf", HubSpec(R, revision="refs/pr/3", path="a.gguf")),
    (f"{R}@feature%2Fx/a.gguf", HubSpec(R, revision="feature/x", path="a.gguf")),
    # one file, any depth
    (f"{R}/model-Q4_K_M.gguf", HubSpec(R, path="model-Q4_K_M.gguf")),
    (f"{R}/Q4_K_M/part-00001-of-00002.gguf", HubSpec(R, path="Q4_K_M/part-00001-of-00002.gguf")),
    (f"{R}/a/b/c/d.gguf", HubSpec(R, path="a/b/c/d.gguf")),
    (f"{R}/odd:name.gguf", HubSpec(R, path="odd:name.gguf")),
    (f"{R}/my model.gguf", HubSpec(R, path="my model.gguf")),
    (f"{R}@v1@x", HubSpec(R, revision="v1@x")),
    (f"{R}@v2/config.json", HubSpec(R, revision="v2", path="config.json")),
    # hf://
    (f"hf://{R}", HubSpec(R)),
    (f"HF://{R}", HubSpec(R)),
    (f"hf://{R}:Q5_K_M", HubSpec(R, quant="Q5_K_M")),
    (f"hf://{R}/dir/x.gguf", HubSpec(R, path="dir/x.gguf")),
    (f"hf://{R}@{SHA}/x.gguf", HubSpec(R, revision=SHA, path="x.gguf")),
    (f"hf://{R}@v1:Q4_K_S", HubSpec(R, revision="v1", quant="Q4_K_S")),
    # Hub URLs
    (f"https://huggingface.co/{R}", HubSpec(R)),
    (f"https://huggingface.co/{R}/", HubSpec(R)),
    (f"http://huggingface.co/{R}", HubSpec(R)),
    (f"https://hf.co/{R}", HubSpec(R)),
    (f"https://www.huggingface.co/{R}", HubSpec(R)),
    (f"https://HuggingFace.co./{R}", HubSpec(R)),
    (f"https://huggingface.co/{R}/tree/main", HubSpec(R, revision="main")),
    (f"https://huggingface.co/{R}/tree/refs%2Fpr%2F7", HubSpec(R, revision="refs/pr/7")),
    (
        f"https://huggingface.co/{R}/resolve/main/model-Q4_K_M.gguf",
        HubSpec(R, revision="main", path="model-Q4_K_M.gguf"),
    ),
    (
        f"https://huggingface.co/{R}/resolve/main/model-Q4_K_M.gguf?download=true#x",
        HubSpec(R, revision="main", path="model-Q4_K_M.gguf"),
    ),
    (
        f"https://huggingface.co/{R}/blob/{SHA}/Q8_0/x-00001-of-00002.gguf",
        HubSpec(R, revision=SHA, path="Q8_0/x-00001-of-00002.gguf"),
    ),
    (
        f"https://huggingface.co/{R}/raw/main/README.md",
        HubSpec(R, revision="main", path="README.md"),
    ),
    (
        f"https://hf.co/{R}/resolve/main/my%20model%23.gguf",
        HubSpec(R, revision="main", path="my model#.gguf"),
    ),
    (
        f"https://huggingface.co/{R}/resolve/refs/pr/2/x.gguf",
        HubSpec(R, revision="refs/pr/2", path="x.gguf"),
    ),
    # the configured endpoint (a mirror, the fake hub)
    (f"{LOCAL}/{R}/resolve/main/x.gguf", HubSpec(R, revision="main", path="x.gguf")),
    (f"{LOCAL}/{R}", HubSpec(R)),
    # plain URLs
    ("https://example.com/files/model.gguf", UrlSpec("https://example.com/files/model.gguf")),
    ("http://127.0.0.1:9999/x?sig=1", UrlSpec("http://127.0.0.1:9999/x?sig=1")),
    ("https://huggingface.co:8443/a/b", UrlSpec("https://huggingface.co:8443/a/b")),
    (
        "https://cdn-lfs.huggingface.co/repos/ab/cd",
        UrlSpec("https://cdn-lfs.huggingface.co/repos/ab/cd"),
    ),
    ("https://[::1]:8080/x.gguf", UrlSpec("https://[::1]:8080/x.gguf")),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=[t for t, _ in ACCEPTED])
def test_accepted_forms(text: str, expected: Spec) -> None:
    assert parse_spec(text, default_endpoint=LOCAL) == expected


def test_the_endpoint_with_a_path_prefix() -> None:
    spec = parse_spec(
        "https://mirror.example/hf/a/b/resolve/main/x.gguf",
        default_endpoint="https://mirror.example/hf/",
    )
    assert spec == HubSpec("a/b", revision="main", path="x.gguf")
    other = parse_spec(
        "https://mirror.example/other/a/b", default_endpoint="https://mirror.example/hf"
    )
    assert isinstance(other, UrlSpec)


def test_the_default_endpoint_is_huggingface() -> None:
    assert isinstance(parse_spec(f"{LOCAL}/{R}"), UrlSpec)
    assert parse_spec(f"https://huggingface.co/{R}") == HubSpec(R)


MALFORMED: list[tuple[str, str]] = [
    ("", "empty"),
    ("   ", "empty"),
    ("justaname", "owner/name"),
    ("/name", "owner is empty"),
    ("owner/", "name is empty"),
    ("owner//x.gguf", "name is empty"),
    ("-owner/name", "may not start or end"),
    ("owner/name.", "may not start or end"),
    ("own er/name", "may only contain"),
    ("owner/name:Q4 K", "not a known quantization"),
    ("owner/name@a b", "not a valid revision"),
    ("https://x.org/a b.gguf", "%20"),
    ("owner/na--me", "'--'"),
    ("owner/na..me", "may not contain"),
    ("owner/name.git", ".git"),
    ("owner/" + "n" * 97, "longer than 96"),
    ("owner/näme", "may only contain"),
    ("datasets/squad", "only model repos"),
    ("owner/name:", "quantization after ':' is empty"),
    ("owner/name:Q4-K-M", "not a known quantization"),
    ("owner/name:Q4_K_M/x.gguf", "cannot contain '/'"),
    ("owner/name@", "revision after '@' is empty"),
    ("owner/name@a..b", "not a valid revision"),
    ("owner/name@~x", "not a valid revision"),
    ("owner/name@x.lock", "not a valid revision"),
    ("owner/name/a/../b.gguf", "'..'"),
    ("owner/name/a//b.gguf", "empty"),
    ("owner/name/./b.gguf", "'.'"),
    ("owner/name@v1@{x}", "not a valid revision"),
    ("owner/name/a\x00b.gguf", "control characters"),
    ("hf:owner/name", "hf://owner/name"),
    ("hf://owner", "owner/name"),
    ("ftp://example.com/x.gguf", "ftp: is not a supported scheme"),
    ("file:///etc/passwd", "file: is not a supported scheme"),
    ("javascript:alert(1)", "javascript: is not a supported scheme"),
    ("data:text/plain,hi", "data: is not a supported scheme"),
    ("gopher://x/y", "gopher: is not a supported scheme"),
    ("https:example.com", "https://host/path"),
    ("https://", "no host"),
    ("https:///path", "no host"),
    ("http://[::1/x", "not a valid URL"),
    ("http://example.com:99999/x", "not a valid URL"),
    ("https://huggingface.co/", "must name a model"),
    ("https://huggingface.co/owner", "must name a model"),
    (f"https://huggingface.co/{R}/discussions/3", "/discussions/"),
    (f"https://huggingface.co/{R}/tree/main/Q4_K_M", "folder"),
    (f"https://huggingface.co/{R}/resolve/main", "no file path"),
    (f"https://huggingface.co/{R}/resolve", "no revision"),
    ("https://huggingface.co/datasets/owner/name", "only model repos"),
    ("https://huggingface.co/spaces/owner/name", "only model repos"),
    ("Qwen2.5-7B:Q4_K_M", "owner/name"),
]


@pytest.mark.parametrize(("text", "problem"), MALFORMED, ids=[t or "<empty>" for t, _ in MALFORMED])
def test_malformed_forms(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert problem in message
    assert ACCEPTED_FORMS in message


def test_a_long_request_is_not_echoed_in_full() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("x" * 5000)
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        (HubSpec(R), f"hf://{R}@main"),
        (HubSpec(R, quant="Q4_K_M"), f"hf://{R}@main:Q4_K_M"),
        (HubSpec(R, revision="refs/pr/1", quant="UD-Q4_K_M"), f"hf://{R}@refs%2Fpr%2F1:UD-Q4_K_M"),
        (HubSpec(R, revision=SHA, path="d/x.gguf"), f"hf://{R}@{SHA}/d/x.gguf"),
        (
            UrlSpec("HTTPS://User:pw@Example.COM:443/a/B.gguf?x=1#frag"),
            "https://example.com/a/B.gguf?x=1",
        ),
        (UrlSpec("http://example.com:8080"), "http://example.com:8080/"),
    ],
)
def test_canonical_keys(spec: Spec, key: str) -> None:
    assert spec.canonical() == key


def test_equivalent_requests_share_a_key() -> None:
    keys = {
        parse_spec(text).canonical()
        for text in (
            f"{R}:q4_k_m",
            f"hf://{R}:Q4_K_M",
            f"{R}@main:Q4_K_M",
        )
    }
    assert keys == {f"hf://{R}@main:Q4_K_M"}
    file_keys = {
        parse_spec(text).canonical()
        for text in (
            f"https://huggingface.co/{R}/resolve/main/x.gguf",
            f"https://huggingface.co/{R}/blob/main/x.gguf?download=true",
            f"{R}@main/x.gguf",
        )
    }
    assert len(file_keys) == 1


@pytest.mark.parametrize(("text", "_expected"), ACCEPTED[:-5])
def test_canonical_parses_back_to_the_same_key(text: str, _expected: Spec) -> None:
    key = parse_spec(text, default_endpoint=LOCAL).canonical()
    assert parse_spec(key).canonical() == key


def test_validate_repo_id() -> None:
    assert validate_repo_id("a/b") is None
    assert validate_repo_id("a" * 96 + "/b") is None
    assert validate_repo_id("a/b/c") is not None
    assert validate_repo_id("a") is not None


def test_parse_quant_token_is_strict() -> None:
    assert str(parse_quant_token("q4_k_m")) == "Q4_K_M"
    assert str(parse_quant_token("UD_Q4_K_M")) == "UD-Q4_K_M"
    assert str(parse_quant_token("ud-q6_k")) == "UD-Q6_K"
    assert str(parse_quant_token("UD-Q8_0")) == "Q8_0"
    assert parse_quant_token("model-Q4_K_M.gguf") is None
    assert parse_quant_token("UD-NOT_A_QUANT") is None


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parse_spec_only_ever_raises_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError:
        return
    assert isinstance(spec, HubSpec | UrlSpec)
    spec.canonical()


_SPEC_ALPHABET = st.sampled_from(
    [*"ab.-_/:@%2F09", "hf://", "https://", "http://", "huggingface.co/", "Q4_K_M", "UD-", "[", "]"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_SPEC_ALPHABET, max_size=20).map("".join))
def test_parse_spec_on_spec_like_text(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError:
        return
    key = spec.canonical()
    if isinstance(spec, HubSpec):
        assert parse_spec(key).canonical() == key


# --- filename_from_url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "disposition", "name"),
    [
        ("https://x.org/a/b/model.gguf", None, "model.gguf"),
        ("https://x.org/a/b/model.gguf?sig=1#f", None, "model.gguf"),
        ("https://x.org/a/my%20model%C3%A9.gguf", None, "my modelé.gguf"),
        ("https://x.org/a/b/", None, "download"),
        ("https://x.org", None, "download"),
        ("https://x.org/dl", 'attachment; filename="real.gguf"', "real.gguf"),
        ("https://x.org/dl", "attachment; filename=plain.gguf", "plain.gguf"),
        (
            "https://x.org/dl",
            "attachment; filename=\"fallback.gguf\"; filename*=UTF-8''%E2%82%AC%20rates.gguf",
            "€ rates.gguf",
        ),
        (
            "https://x.org/dl",
            "inline; filename*=UTF-8''model.gguf; filename=\"model.gguf\";",
            "model.gguf",
        ),
        ("https://x.org/dl", 'attachment; filename="../../etc/passwd"', "passwd"),
        ("https://x.org/dl", 'attachment; filename="C:\\\\evil\\\\x.gguf"', "x.gguf"),
        ("https://x.org/good.gguf", 'attachment; filename=".."', "good.gguf"),
        ("https://x.org/good.gguf", "attachment", "good.gguf"),
        ("https://x.org/a/..", None, "download"),
        ("https://x.org/a/%2e%2e", None, "download"),
        ("https://x.org/a/%2Fetc%2Fpasswd", None, "passwd"),
        ("http://[::1/x", None, "download"),
    ],
)
def test_filename_from_url(url: str, disposition: str | None, name: str) -> None:
    assert filename_from_url(url, disposition) == name
