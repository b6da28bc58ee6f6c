"""Factor files round-trip, reject every malformed field with one line naming it; CSV and vLLM forms."""

import json

import pytest

from ropesearch.errors import RopesearchError
from ropesearch.export import (
    load_factors, read_factor_csv, rope_parameters, save_factors, vllm_overrides, write_factor_csv,
)
from ropesearch.export.factor_file import factor_provenance, factors_to_dict
from ropesearch.rope import RopeBase, longrope, methods

BASE = RopeBase(10_000.0, 16, 4096)


@pytest.fixture
def searched():
    return longrope(BASE, [1.0 + 0.25 * i for i in range(8)], [1.0] * 4 + [1.1] * 4, scale=8, start_tokens=4)


def write(tmp_path, document):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_round_trip_keeps_every_field(tmp_path, searched):
    path = save_factors(searched, tmp_path / "x.json", provenance={"model": "m", "scores": {"ppl": 12.5}}, monotone=True)
    document = json.loads(path.read_text())
    assert document["format"] == "ropesearch/factors@1"
    assert document["provenance"]["model"] == "m" and document["provenance"]["ropesearch_version"]
    assert load_factors(path) == searched
    dynamic = methods.dynamic_ntk(BASE, 4)
    assert load_factors(save_factors(dynamic, tmp_path / "d.json")) == dynamic
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def mutate(document, dotted, value):
    node = document
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("format", "ropesearch/factors@9", r"field format is 'ropesearch/factors@9', not a format this version reads"),
        ("format", KeyError, "field format is missing"),
        ("rope", KeyError, "field rope is missing"),
        ("rope.long_factor", KeyError, "field rope.long_factor is missing"),
        ("rope.long_factor", "1,2,3", "field rope.long_factor must be list"),
        ("rope.long_factor", [1.0] * 7, "field rope.long_factor has 7 values but rotary_dim 16 needs 8"),
        ("rope.short_factor", [1.0] * 7 + [0.0], r"field rope.short_factor\[7\] is 0.0: factors must be finite numbers > 0"),
        ("rope.short_factor", [1.0] * 7 + ["x"], r"field rope.short_factor\[7\] is \"x\""),
        ("rope.long_factor", [1.0] * 7 + [-2], r"field rope.long_factor\[7\] is -2"),
        ("rope.rotary_dim", 15, "field rope.rotary_dim must be an even number"),
        ("rope.rope_theta", "big", "field rope.rope_theta must be float"),
        ("rope.attention_factor", -1.0, "field rope.attention_factor must be > 0"),
        ("rope.start_tokens", -3, "field rope.start_tokens must be >= 0"),
        ("rope.target_context", 0, "field rope.target_context must be >= 1"),
        ("rope.long_factor", [1.0, 2.0, 1.5, 3.0, 3.0, 3.0, 3.0, 3.0],
         r"field rope.long_factor decreases at index 2 \(2.0 -> 1.5\) but the file's search space demanded"),
    ],
)
def test_malformed_field_is_named(tmp_path, searched, field, value, message):
    document = factors_to_dict(searched, monotone=True)
    mutate(document, field, value)
    with pytest.raises(RopesearchError, match=message) as info:
        load_factors(write(tmp_path, document))
    assert "\n" not in str(info.value)


def test_decreasing_factors_are_fine_when_the_space_allowed_them(tmp_path, searched):
    document = factors_to_dict(searched, monotone=False)
    document["rope"]["long_factor"] = [1.0, 2.0, 1.5, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert load_factors(write(tmp_path, document)).long_factor[2] == 1.5


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(RopesearchError, match="not valid JSON"):
        load_factors(write(tmp_path, "{nope"))
    with pytest.raises(RopesearchError, match="does not exist"):
        load_factors(tmp_path / "absent.json")


def test_deeply_nested_or_special_factor_files_are_named(tmp_path):
    import os

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for reader in (load_factors, factor_provenance):
        with pytest.raises(RopesearchError, match=r"factor file .*deep.json.*nested deeper"):
            reader(deep)
    os.mkfifo(tmp_path / "fifo.json")  # refused at once, never waited on
    with pytest.raises(RopesearchError, match=r"factor file .*fifo.json.*(FIFO|not a regular file)"):
        load_factors(tmp_path / "fifo.json")
    listed = write(tmp_path, [1, 2])
    with pytest.raises(RopesearchError, match="holds a list"):
        load_factors(listed)


def test_file_for_another_model_is_rejected(tmp_path, searched):
    path = save_factors(searched, tmp_path / "x.json")
    with pytest.raises(RopesearchError, match=r"has 8 factors \(rotary_dim 16\) but the model rotates 64 dims"):
        load_factors(path, expect=RopeBase(10_000.0, 64, 4096))
    with pytest.raises(RopesearchError, match="original_context 4096 but the model was trained at 2048"):
        load_factors(path, expect=RopeBase(10_000.0, 16, 2048))


def test_csv_round_trip_and_import(tmp_path, searched):
    path = write_factor_csv(searched.long_factor, tmp_path / "long.csv")
    assert path.read_text().count("\n") == 8
    assert read_factor_csv(path, 8) == list(searched.long_factor)
    (tmp_path / "row.csv").write_text("factor\n1,1.5,2,2.5\n")
    assert read_factor_csv(tmp_path / "row.csv") == [1.0, 1.5, 2.0, 2.5]
    with pytest.raises(RopesearchError, match="has 4 factors but the model needs 8"):
        read_factor_csv(tmp_path / "row.csv", 8)
    (tmp_path / "bad.csv").write_text("1\n2\nabc\n")
    with pytest.raises(RopesearchError, match="'abc' is not a number"):
        read_factor_csv(tmp_path / "bad.csv")


def test_transformers_and_vllm_forms(searched):
    with pytest.raises(RopesearchError, match="start_tokens=4 has no equivalent"):
        rope_parameters(searched)
    params = rope_parameters(searched, partial_rotary_factor=0.5, allow_start_tokens=True)
    assert params["rope_type"] == "longrope" and params["original_max_position_embeddings"] == 4096
    assert params["long_factor"] == list(searched.long_factor) and params["short_factor"] == list(searched.short_factor)
    # transformers reads attention_factor, vLLM reads long_mscale/short_mscale: the same number everywhere
    assert params["attention_factor"] == params["long_mscale"] == params["short_mscale"] == searched.attention_factor
    assert params["partial_rotary_factor"] == 0.5 and params["rope_theta"] == 10_000.0
    overrides = vllm_overrides(methods.yarn(BASE, 8))
    assert overrides["max_model_len"] == 32768
    assert overrides["hf_overrides"]["max_position_embeddings"] == 32768
    assert overrides["hf_overrides"]["rope_parameters"]["rope_type"] == "longrope"
    assert rope_parameters(methods.dynamic_ntk(BASE, 4)) == {"rope_theta": 10_000.0, "rope_type": "dynamic", "factor": 4.0}
