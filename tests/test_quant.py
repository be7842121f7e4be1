"""core/quant.py: gglib's quant parsing and selection rules, plus shard-set checks."""

from __future__ import annotations

import pytest

from modelfetch.core.errors import SpecError
from modelfetch.core.quant import (
    DEFAULT_PREFERENCE,
    QUANT_PATTERNS,
    UD_BASES,
    Quant,
    QuantGroup,
    choose_quant,
    group_gguf_files,
    mmproj_files,
    parse_quant,
    parse_shard,
)

GiB = 1 << 30


def q(name: str | None) -> str | None:
    """parse_quant, as its display string."""
    parsed = parse_quant(name) if name is not None else None
    return None if parsed is None else str(parsed)


def groups_of(*names: str, size: int = 4 * GiB) -> list[QuantGroup]:
    """Like gglib's MockResolver: one `model-{q}.gguf` per quant."""
    return group_gguf_files((f"model-{n}.gguf", size) for n in names)


# --- parse_quant: gglib types.rs -----------------------------------------------------------------


def test_quantization_from_filename() -> None:
    assert q("model-Q4_K_M.gguf") == "Q4_K_M"
    assert q("llama-F16.gguf") == "F16"
    assert q("unknown.gguf") is None


def test_quantization_distinguishes_ud_dynamic_from_plain() -> None:
    assert q("Qwen3-Coder-Next-Q6_K.gguf") == "Q6_K"
    assert q("Qwen3-Coder-Next-UD-Q6_K.gguf") == "UD-Q6_K"
    assert parse_quant("x-Q6_K.gguf") != parse_quant("x-UD-Q6_K.gguf")


def test_quantization_longest_match_wins_over_table_order() -> None:
    # Q6_K_XL has no UD- variant, so the UD token is ignored; the longer pattern still wins.
    assert q("Qwen3-Coder-Next-UD-Q6_K_XL.gguf") == "Q6_K_XL"
    assert q("Qwen3-Coder-Next-UD-Q4_K_XL.gguf") == "Q4_K_XL"
    assert q("model-IQ2_XXS.gguf") == "IQ2_XXS"  # not IQ2_XS or IQ2_S


def test_quantization_boundary_avoids_model_name_collisions() -> None:
    assert q("Deepseek-Q6King-7B.gguf") is None
    assert q("modelQ4_K_M.gguf") is None
    # Q4_K_M is not delimited here, but "Q4" is (by "-" and "_"): gglib reads Q4.
    assert q("model-Q4_K_Mx.gguf") == "Q4"


def test_quantization_ud_only_variants_previously_unknown() -> None:
    assert q("Qwen3-Coder-Next-UD-IQ1_S.gguf") == "UD-IQ1_S"
    assert q("Qwen3-Coder-Next-UD-TQ1_0.gguf") == "UD-TQ1_0"


def test_quantization_ud_variant_as_str_round_trip() -> None:
    for base in ("Q3_K_M", "Q3_K_S", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K"):
        ud = Quant(base, ud=True)
        assert str(ud) == f"UD-{base}"
        assert parse_quant(str(ud)) == ud
        assert parse_quant(base) == Quant(base)


def test_quantization_from_str_ud_prefix() -> None:
    assert q("UD-Q6_K") == "UD-Q6_K"
    assert q("ud-q6_k") == "UD-Q6_K"
    assert q("UD_Q4_K_M") == "UD-Q4_K_M"
    assert q("Q6_K") == "Q6_K"
    assert q("UD-NOT_A_QUANT") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("q4_k_m", "Q4_K_M"),
        ("model.Q4_K_M.gguf", "Q4_K_M"),
        ("Q4_K_M/model-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"),
        ("UD-Q6_K/model-UD-Q6_K.gguf", "UD-Q6_K"),
        ("model-FP16.gguf", "F16"),
        ("model-fp32.gguf", "F32"),
        ("model-bf16.gguf", "BF16"),
        ("model.imatrix.gguf", "imatrix"),
        ("model-MXFP4.gguf", "MXFP4"),
        ("model-Q4.gguf", "Q4"),
        ("model-Q8_0.gguf", "Q8_0"),
        ("model-IQ4_NL.gguf", "IQ4_NL"),
        ("BUD-Q4_K_M.gguf", "Q4_K_M"),  # "BUD" is not the token UD
        ("UDQ4_K_M.gguf", None),  # no boundary before Q4
        ("ud.q4_k_s.gguf", "UD-Q4_K_S"),  # any delimiter after UD
        ("model-UD-Q8_0.gguf", "Q8_0"),  # Q8_0 has no UD variant
        ("Q4_K_M", "Q4_K_M"),
        ("", None),
        ("ß-q4_k_m", "Q4_K_M"),  # non-ASCII neighbours are delimiters, indices stay aligned
        ("model-Q4_K_M-Q8_0.gguf", "Q4_K_M"),  # equal length: the table's first pattern wins
    ],
)
def test_parse_quant_table(text: str, expected: str | None) -> None:
    assert q(text) == expected


def test_every_pattern_parses_to_its_canonical_name() -> None:
    for pattern, name in QUANT_PATTERNS:
        assert q(f"model-{pattern}.gguf") == name
        assert q(f"model-{pattern.lower()}.gguf") == name
    for base in UD_BASES:
        assert q(f"model-UD-{base}.gguf") == f"UD-{base}"


def test_quant_rejects_names_outside_the_table() -> None:
    with pytest.raises(ValueError):
        Quant("Q9_Z")
    with pytest.raises(ValueError):
        Quant("Q8_0", ud=True)


# --- parse_shard: gglib shard_filename.rs --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("model-00001-of-00005.gguf", "model.gguf"),
        ("llama-3-8b-q4_k_m-00003-of-00008.gguf", "llama-3-8b-q4_k_m.gguf"),
        ("model-00010-of-00100.gguf", "model.gguf"),
        ("model.gguf", "model.gguf"),
        ("llama-3-8b-q4_k_m.gguf", "llama-3-8b-q4_k_m.gguf"),
        ("noextension", "noextension"),
        ("has-numbers-123.gguf", "has-numbers-123.gguf"),
        ("model-of-something.gguf", "model-of-something.gguf"),
        ("model-of-doom-00001-of-00005.gguf", "model-of-doom.gguf"),
        ("prefix-of-test.gguf", "prefix-of-test.gguf"),
        ("model-00001-of-00005", "model-00001-of-00005"),  # no extension: unchanged
        ("v1.0/model-00001-of-00005", "v1.0/model-00001-of-00005"),  # a dot in a dir is no ext
        ("Q8_0/model-00002-of-00003.gguf", "Q8_0/model.gguf"),
    ],
)
def test_base_shard_filename(name: str, base: str) -> None:
    shard = parse_shard(name)
    assert (shard.base if shard else name) == base


def test_parse_shard_fields() -> None:
    shard = parse_shard("dir/model-00002-of-00005.gguf")
    assert shard is not None
    assert (shard.index, shard.count, shard.base) == (2, 5, "dir/model.gguf")
    assert shard.sibling(5) == "dir/model-00005-of-00005.gguf"


@pytest.mark.parametrize(
    "name", ["m-00000-of-00002.gguf", "m-00003-of-00002.gguf", "m-1-of-0.gguf", "m--of-2.gguf"]
)
def test_parse_shard_rejects_impossible_numbers(name: str) -> None:
    assert parse_shard(name) is None


# --- grouping: gglib parsing.rs, plus shard-set completeness -------------------------------------


def test_aggregate_quantizations_single_files() -> None:
    groups = group_gguf_files(
        [("model-Q8_0.gguf", 8_000_000_000), ("model-Q4_K_M.gguf", 4_000_000_000), ("README.md", 1)]
    )
    assert [g.name for g in groups] == ["Q4_K_M", "Q8_0"]  # sorted by name
    assert (groups[0].shard_count, groups[0].total_size) == (1, 4_000_000_000)
    assert groups[1].shard_count == 1


def test_aggregate_quantizations_sharded() -> None:
    groups = group_gguf_files(
        [
            ("model-Q8_0-00003-of-00003.gguf", 4_000_000_000),
            ("model-Q8_0-00001-of-00003.gguf", 4_000_000_000),
            ("model-Q8_0-00002-of-00003.gguf", 4_000_000_000),
        ]
    )
    assert len(groups) == 1
    g = groups[0]
    assert (g.name, g.shard_count, g.total_size) == ("Q8_0", 3, 12_000_000_000)
    assert g.paths == (
        "model-Q8_0-00001-of-00003.gguf",
        "model-Q8_0-00002-of-00003.gguf",
        "model-Q8_0-00003-of-00003.gguf",
    )
    assert g.complete and g.missing == () and g.extra == ()


def test_aggregate_quantizations_distinguishes_ud_dynamic_quants() -> None:
    groups = group_gguf_files(
        [("Q6_K/model-Q6_K.gguf", 6_000_000_000), ("UD-Q6_K/model-UD-Q6_K.gguf", 6_500_000_000)]
    )
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"Q6_K", "UD-Q6_K"}
    assert by_name["Q6_K"].paths == ("Q6_K/model-Q6_K.gguf",)
    assert by_name["UD-Q6_K"].total_size == 6_500_000_000


def test_filter_files_by_quantization_is_case_insensitive() -> None:
    groups = group_gguf_files([("model-q4_k_m.GGUF", 10), ("model-Q8_0.gguf", 20)])
    assert choose_quant(groups, "Q4_K_M").paths == ("model-q4_k_m.GGUF",)
    assert choose_quant(groups, "q4_k_m").paths == ("model-q4_k_m.GGUF",)


def test_unknown_and_non_gguf_files_are_dropped() -> None:
    groups = group_gguf_files(
        [("model.gguf", 1), ("model-Q4_K_M.safetensors", 1), ("README-Q4_K_M.md", 1)]
    )
    assert groups == []


def test_missing_shards_make_a_set_incomplete() -> None:
    groups = group_gguf_files(
        [
            ("big-Q4_K_M-00001-of-00004.gguf", 100),
            ("big-Q4_K_M-00003-of-00004.gguf", 100),
        ]
    )
    (g,) = groups
    assert not g.complete
    assert g.missing == ("big-Q4_K_M-00002-of-00004.gguf", "big-Q4_K_M-00004-of-00004.gguf")
    assert (g.shard_count, g.expected_count) == (2, 4)
    assert "2 of 4 shards, incomplete" in g.describe()


def test_mmproj_files_are_never_part_of_a_quant() -> None:
    entries = [
        ("model-F16.gguf", 16 * GiB),
        ("mmproj-F16.gguf", 600 << 20),
        ("vision/MMPROJ-model-F16.gguf", 600 << 20),
        ("model-Q4_K_M.gguf", 4 * GiB),
    ]
    groups = group_gguf_files(entries)
    f16 = next(g for g in groups if g.name == "F16")
    assert f16.paths == ("model-F16.gguf",)
    assert f16.shard_count == 1 and f16.extra == ()
    assert mmproj_files(entries) == [
        ("mmproj-F16.gguf", 600 << 20),
        ("vision/MMPROJ-model-F16.gguf", 600 << 20),
    ]


def test_a_stray_single_file_beside_a_shard_set_is_extra() -> None:
    groups = group_gguf_files(
        [
            ("Q4_K_M/model-Q4_K_M-00001-of-00002.gguf", 10),
            ("Q4_K_M/model-Q4_K_M-00002-of-00002.gguf", 10),
            ("model-Q4_K_M.gguf", 15),
        ]
    )
    (g,) = groups
    assert g.paths == (
        "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf",
        "Q4_K_M/model-Q4_K_M-00002-of-00002.gguf",
    )
    assert g.total_size == 20 and g.complete
    assert g.extra == ("model-Q4_K_M.gguf",)


def test_the_larger_of_two_shard_sets_is_kept() -> None:
    groups = group_gguf_files(
        [
            ("a-Q8_0-00001-of-00002.gguf", 1),
            ("a-Q8_0-00002-of-00002.gguf", 1),
            ("b-Q8_0-00001-of-00003.gguf", 1),
            ("b-Q8_0-00002-of-00003.gguf", 1),
            ("b-Q8_0-00003-of-00003.gguf", 1),
        ]
    )
    (g,) = groups
    assert [p[:1] for p in g.paths] == ["b", "b", "b"]
    assert g.extra == ("a-Q8_0-00001-of-00002.gguf", "a-Q8_0-00002-of-00002.gguf")


def test_equal_sets_prefer_the_complete_one() -> None:
    groups = group_gguf_files(
        [
            ("a-Q8_0-00001-of-00003.gguf", 1),  # incomplete: 1 of 3
            ("b-Q8_0.gguf", 1),  # a complete single file, same file count
        ]
    )
    (g,) = groups
    assert g.paths == ("b-Q8_0.gguf",) and g.complete
    assert g.extra == ("a-Q8_0-00001-of-00003.gguf",)


# --- choose_quant: gglib quant_selector.rs -------------------------------------------------------


def test_explicit_quant_exists() -> None:
    assert choose_quant(groups_of("Q4_K_M", "Q8_0", "F16"), "Q8_0").name == "Q8_0"


def test_explicit_quant_not_found() -> None:
    with pytest.raises(SpecError) as info:
        choose_quant(groups_of("Q8_0"), "Q4_K_M")
    message = str(info.value)
    assert "Q4_K_M" in message
    assert "Q8_0 (4.0 GiB, 1 file)" in message


def test_single_quant_auto_selected() -> None:
    assert choose_quant(groups_of("Q8_0"), None).name == "Q8_0"


def test_multiple_quants_default_preference() -> None:
    assert choose_quant(groups_of("Q8_0", "Q4_K_M", "F16"), None).name == "Q4_K_M"


def test_default_preference_order() -> None:
    for i, preferred in enumerate(DEFAULT_PREFERENCE):
        later = DEFAULT_PREFERENCE[i:]
        assert choose_quant(groups_of(*later, "F16"), None).name == preferred


def test_no_quants_available() -> None:
    with pytest.raises(SpecError, match=r"(?i)no quantizations"):
        choose_quant([], None)


def test_no_default_match_requires_selection() -> None:
    with pytest.raises(SpecError) as info:
        choose_quant(groups_of("IQ2_XXS", "IQ1_M"), None)
    message = str(info.value)
    assert "please select one" in message
    assert "IQ1_M (4.0 GiB, 1 file)" in message and "IQ2_XXS (4.0 GiB, 1 file)" in message


def test_ud_quants_never_match_a_default() -> None:
    groups = groups_of("UD-Q4_K_M", "UD-Q5_K_M", "Q8_0")
    assert choose_quant(groups, None).name == "Q8_0"
    with pytest.raises(SpecError, match="please select one"):
        choose_quant(groups_of("UD-Q4_K_M", "UD-Q5_K_M"), None)


def test_ud_and_plain_are_distinct_when_requested() -> None:
    groups = groups_of("Q4_K_M", "UD-Q4_K_M")
    assert choose_quant(groups, "Q4_K_M").paths == ("model-Q4_K_M.gguf",)
    assert choose_quant(groups, "UD-Q4_K_M").paths == ("model-UD-Q4_K_M.gguf",)
    assert choose_quant(groups, "ud_q4_k_m").paths == ("model-UD-Q4_K_M.gguf",)
    with pytest.raises(SpecError, match="UD-Q6_K"):
        choose_quant(groups_of("Q6_K"), "UD-Q6_K")


def test_error_lists_sizes_and_shard_counts() -> None:
    entries = [(f"m-Q8_0-0000{i}-of-00003.gguf", 2 * GiB) for i in (1, 2, 3)]
    entries.append(("m-Q2_K.gguf", 1_500 << 20))
    with pytest.raises(SpecError) as info:
        choose_quant(group_gguf_files(entries), "Q4_K_M")
    assert "Q2_K (1.5 GiB, 1 file), Q8_0 (6.0 GiB, 3 shards)" in str(info.value)


def test_an_incomplete_quant_is_refused_when_asked_for() -> None:
    groups = group_gguf_files(
        [("m-Q4_K_M-00001-of-00002.gguf", 1), ("m-Q8_0.gguf", 1), ("m-Q6_K.gguf", 1)]
    )
    with pytest.raises(SpecError, match=r"m-Q4_K_M-00002-of-00002\.gguf"):
        choose_quant(groups, "Q4_K_M")
    # Auto-selection passes over it: Q6_K is the next default present.
    assert choose_quant(groups, None).name == "Q6_K"


def test_a_lone_incomplete_quant_is_refused() -> None:
    groups = group_gguf_files([("m-Q4_K_M-00002-of-00002.gguf", 1)])
    with pytest.raises(SpecError, match="incomplete"):
        choose_quant(groups, None)
