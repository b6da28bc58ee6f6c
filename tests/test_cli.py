"""The CLI: help, factor files, export formats, and one clear line for every kind of bad input."""

import json

import pytest
from click.testing import CliRunner
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_model
from ropesearch.cli import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save_pretrained(path)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("factors", "export", "fetch-model", "show"):
        assert command in result.output
    assert "--scale" in run("factors", "--help").output


def test_factors_then_every_export_format(model_dir, tmp_path):
    factor_file = tmp_path / "yarn.json"
    assert run("factors", "yarn", "--model", model_dir, "--scale", 4, "--beta-fast", 16, "--out", factor_file).exit_code == 0
    rope = json.loads(factor_file.read_text())["rope"]
    assert rope["method"] == "yarn" and rope["params"]["beta_fast"] == 16 and rope["target_context"] == 256

    result = run("export", factor_file, "--model", model_dir, "--out", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_parameters"]["long_factor"] == rope["long_factor"] and config["max_position_embeddings"] == 256
    assert not any(p.is_symlink() for p in (tmp_path / "hf").iterdir())  # self-contained by default
    assert config["rope_scaling"]["long_factor"] == rope["long_factor"] and config["rope_theta"] == rope["rope_theta"]
    assert run("export", factor_file, "--model", model_dir, "--out", tmp_path / "linked", "--symlink").exit_code == 0
    assert (tmp_path / "linked" / "model.safetensors").is_symlink()

    assert run("export", factor_file, "--model", model_dir, "--out", tmp_path / "v", "--format", "vllm").exit_code == 0
    overrides = json.loads((tmp_path / "v" / "vllm_overrides.json").read_text())
    assert overrides["hf_overrides"]["rope_parameters"]["long_mscale"] == rope["attention_factor"]
    serve = (tmp_path / "v" / "serve.sh").read_text()
    assert "--hf-overrides" in serve and str(tmp_path) not in serve and str(model_dir) not in serve

    assert run("export", factor_file, "--model", model_dir, "--out", tmp_path / "c", "--format", "csv").exit_code == 0
    long_csv = tmp_path / "c" / "long_factor.csv"
    assert [float(x) for x in long_csv.read_text().split()] == rope["long_factor"]

    # CSV back in as LongRoPE factors
    imported = tmp_path / "imported.json"
    assert run("factors", "longrope", "--model", model_dir, "--scale", 4, "--csv", long_csv, "--out", imported).exit_code == 0
    assert json.loads(imported.read_text())["rope"]["long_factor"] == rope["long_factor"]
    assert "long_factor" in run("show", imported).output


def test_printed_summary_without_out(model_dir):
    result = run("factors", "pi", "--model", model_dir, "--scale", 2)
    assert result.exit_code == 0 and "window 64 -> 128" in result.output


def test_show_says_how_far_the_untrained_pairs_stay_in_range(model_dir, tmp_path):
    # the tiny model: window 64; YaRN x4 holds every never-turned pair at 4x (in range to its target),
    # NTK x4 scales the slowest pair only to 4x, the others less: in range only part of the way
    for method in ("yarn", "ntk", "pi"):
        assert run("factors", method, "--model", model_dir, "--scale", 4, "--out", tmp_path / f"{method}.json").exit_code == 0
    line = lambda *args: run("show", *args).output.splitlines()[2]  # noqa: E731
    assert line(tmp_path / "yarn.json").startswith("in range up to 256 tokens: pairs ")
    ntk = line(tmp_path / "ntk.json")
    assert ntk.startswith("in range up to ") and "% of the target)" in ntk
    assert int(ntk.split()[4].replace(",", "")) < 256
    # counted from a fine-tuning at 2x with PI: PI x4 then doubles every pair, so it is in range to 256 again
    assert run("factors", "pi", "--model", model_dir, "--scale", 2, "--out", tmp_path / "pi2.json").exit_code == 0
    assert "the 128-token fine-tuning" in line(tmp_path / "pi.json", "--reference", tmp_path / "pi2.json")
    assert line(tmp_path / "pi.json", "--reference", tmp_path / "pi2.json").startswith("in range up to 256 tokens")
    # a reference of another model's RoPE is refused by name
    assert run("factors", "pi", "--model", "pocket", "--scale", 2, "--out", tmp_path / "pocket.json").exit_code == 0
    assert_one_line_error(run("show", tmp_path / "pi.json", "--reference", tmp_path / "pocket.json"),
                          "is for another RoPE", "fine-tuned with")


def test_bad_input_gives_one_clear_line(model_dir, tmp_path):
    assert_one_line_error(run("factors", "yarn", "--model", tmp_path / "nothing-here", "--scale", 2),
                          "neither a model folder nor a .gguf file")
    assert_one_line_error(run("factors", "yarn", "--model", "no-such-org/no-such-model-xyz", "--scale", 2),
                          "could not load model", "smollm2-135m")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    assert_one_line_error(run("factors", "pi", "--model", gpt2, "--scale", 2), "has no rotary position embedding")

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "ropesearch/factors@1", "rope": {"rotary_dim": 32}}')
    assert_one_line_error(run("export", bad, "--model", model_dir, "--out", tmp_path / "o"), "rope.rope_theta is missing")
    bad.write_text("[1, 2")
    assert_one_line_error(run("export", bad, "--model", model_dir, "--out", tmp_path / "o"), "not valid JSON")

    wrong = tmp_path / "wrong.json"
    assert run("factors", "pi", "--model", model_dir, "--scale", 2, "--out", wrong).exit_code == 0
    document = json.loads(wrong.read_text())
    document["rope"].update(rotary_dim=64, long_factor=[2.0] * 32, short_factor=[2.0] * 32)
    wrong.write_text(json.dumps(document))
    assert_one_line_error(run("export", wrong, "--model", model_dir, "--out", tmp_path / "o"),
                          "has 32 factors (rotary_dim 64) but the model rotates 32 dims")

    assert_one_line_error(run("factors", "pi", "--model", model_dir, "--scale", 2, "--beta-fast", 3),
                          "method 'pi' takes no parameter 'beta_fast'")
    assert_one_line_error(run("factors", "longrope", "--model", model_dir, "--scale", 2), "needs --csv")
    assert_one_line_error(run("factors", "longrope", "--model", model_dir, "--scale", 2, "--beta-slow", 2),
                          "--beta-slow is not a LongRoPE setting")
    assert_one_line_error(run("export", tmp_path / "missing.json", "--model", model_dir, "--out", tmp_path / "o"),
                          "does not exist")
