"""core/paths.py: which server-provided names may become files, and where partial files live."""

from __future__ import annotations

import os.path
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfetch.core.errors import UnsafePathError
from modelfetch.core.paths import (
    part_path,
    safe_join,
    safe_relpath,
    sanitize_filename,
    sidecar_path,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.gguf", PurePosixPath("model.gguf")),
        ("Q4_K_M/model-00001-of-00002.gguf", PurePosixPath("Q4_K_M/model-00001-of-00002.gguf")),
        ("a/b/c.json", PurePosixPath("a/b/c.json")),
        ("..hidden..", PurePosixPath("..hidden..")),  # dots inside a name are fine
        ("\u00e9t\u00e9.txt", PurePosixPath("\u00e9t\u00e9.txt")),
        ("x" * 255, PurePosixPath("x" * 255)),
    ],
)
def test_safe_relpath_accepts(name: str, expected: PurePosixPath) -> None:
    assert safe_relpath(name) == expected


def test_safe_relpath_normalises_to_nfc() -> None:
    decomposed = "e\u0301te\u0301.gguf"
    assert str(safe_relpath(decomposed)) == unicodedata.normalize("NFC", decomposed)


@pytest.mark.parametrize(
    ("name", "mentions"),
    [
        ("", "empty"),
        ("..", "'..'"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("./a", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty component"),
        ("dir/", "empty component"),
        ("C:/Windows", "':'"),
        ("C:evil", "':'"),
        ("file.txt:stream", "':'"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("a\x85b", "control"),
        ("x" * 256, "longer than 255"),
        ("\u00e9" * 128, "longer than 255"),  # 256 bytes in UTF-8
        ("CON", "reserved"),
        ("dir/nul", "reserved"),
        ("NUL.txt", "reserved"),
        ("com1.gguf", "reserved"),
        ("LPT9", "reserved"),
        ("aux /x", "reserved"),
    ],
)
def test_safe_relpath_rejects(name: str, mentions: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        safe_relpath(name)
    assert mentions in str(info.value)


@pytest.mark.parametrize("name", ["CONSOLE", "nullable.txt", "com10", "lpt", "auxiliary/x"])
def test_names_that_only_look_like_devices_are_fine(name: str) -> None:
    assert str(safe_relpath(name)) == name


def test_safe_join_keeps_the_path_type() -> None:
    assert safe_join(Path("/models"), "a/b.gguf") == Path("/models/a/b.gguf")
    assert isinstance(safe_join(Path("/models"), "a"), Path)
    assert str(safe_join("/models", "x.bin")) == "/models/x.bin"


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", "", "..", "a\\..\\..\\x"])
def test_safe_join_refuses_escapes(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_join("/models", name)


@given(st.text(alphabet=st.sampled_from(["a", "b", ".", "/", "\\", ":", "\x00", " ", "é"])))
def test_safe_join_never_escapes_base(name: str) -> None:
    base = "/srv/models"
    try:
        joined = safe_join(base, name)
    except UnsafePathError:
        return
    normalised = os.path.normpath(str(joined))
    assert normalised.startswith(base + "/")
    assert normalised == str(joined)  # nothing for normpath to fold away
    assert ".." not in PurePosixPath(normalised).parts


@given(st.text())
def test_safe_relpath_results_are_relative_and_clean(name: str) -> None:
    try:
        rel = safe_relpath(name)
    except UnsafePathError:
        return
    assert not rel.is_absolute()
    assert all(part not in ("", ".", "..") for part in rel.parts)
    assert all(len(part.encode()) <= 255 for part in rel.parts)


def test_part_and_sidecar_paths_sit_beside_their_destination() -> None:
    dest = Path("/m/x.gguf")
    assert part_path(dest) == Path("/m/x.gguf.part")
    assert sidecar_path(dest) == Path("/m/x.gguf.part.json")
    assert isinstance(part_path(dest), Path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.gguf", "model.gguf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\evil.exe", "evil.exe"),
        ('what?<is>"this"|*.bin', "what__is__this___.bin"),
        ("a\x00b\nc", "a_b_c"),
        ("  .hidden  ", "hidden"),
        ("..", "download"),
        ("", "download"),
        ("/", "download"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("dir/", "download"),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected


def test_sanitize_filename_truncates_keeping_the_extension() -> None:
    name = sanitize_filename("é" * 300 + ".gguf")
    assert name.endswith(".gguf")
    assert len(name.encode()) <= 255


@given(st.text())
def test_sanitize_filename_always_yields_one_safe_component(name: str) -> None:
    clean = sanitize_filename(name)
    assert str(safe_relpath(clean)) == clean
