"""`ropesearch ruler` and the lm-eval RULER tasks with bad or unusual input: one clear error up front,
never a column that mixes settings, never lost results."""

import json
import random

import pytest
from click.testing import CliRunner

from ropesearch.cli import cli
from ropesearch.errors import RopesearchError
from ropesearch.tasks.ruler import TASKS, RulerSuite, parse_tasks
from ropesearch.models import load_tokenizer, resolve_model
from conftest import stdlib_text

BASE = ["ruler", "--model", "pocket", "--lengths", "600", "--tasks", "niah_single_1", "--samples", "1",
        "--max-new-tokens", "2"]


def ruler(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished JSON: YaRN x4 at 600 tokens."""
    path = tmp_path_factory.mktemp("made") / "ruler.json"
    result = ruler(*BASE, "--methods", "yarn", "--scale", "4", "--json", str(path))
    assert result.exit_code == 0, result.output
    return path


def copy(made, tmp_path, change=None):
    document = json.loads(made.read_text())
    if change:
        change(document)
    path = tmp_path / "ruler.json"
    path.write_text(json.dumps(document))
    return path


def test_a_task_named_twice_runs_and_counts_once():
    assert parse_tasks("vt,niah_single_1,vt") == ["vt", "niah_single_1"]


def test_a_resume_at_another_scale_is_refused_and_the_scale_is_kept(made, tmp_path):
    assert json.loads(made.read_text())["ruler"]["yarn"]["rope"]["target_context"] == 4 * 256
    path = copy(made, tmp_path)
    # another length would have run the column at x8 (--scale's default follows the longest length)
    result = ruler(*BASE[:4], "600,700", *BASE[5:], "--methods", "yarn", "--scale", "8", "--json", str(path),
                   "--resume")
    assert result.exit_code != 0 and "ran with yarn to 1024 tokens" in result.output and "--scale" in result.output
    assert json.loads(path.read_text()) == json.loads(made.read_text())  # nothing lost or added


def test_a_resume_in_another_dtype_or_text_field_is_refused(made, tmp_path):
    path = copy(made, tmp_path)
    result = ruler(*BASE, "--methods", "yarn,ntk", "--scale", "4", "--json", str(path), "--resume", "--dtype", "bfloat16")
    assert result.exit_code != 0 and "--dtype float32" in result.output
    path = copy(made, tmp_path, lambda d: d.update(text_field="text"))
    result = ruler(*BASE, "--methods", "yarn,ntk", "--scale", "4", "--json", str(path), "--resume", "--text-field", "body")
    assert result.exit_code != 0 and "text_field" in result.output


def test_one_json_holds_one_task_list(made, tmp_path):
    path = copy(made, tmp_path)
    result = ruler(*BASE[:6], "vt", *BASE[7:], "--methods", "ntk", "--json", str(path), "--resume")
    assert result.exit_code != 0 and "'yarn' in the JSON has --tasks niah_single_1, this run vt" in result.output


def test_an_existing_json_is_kept_without_resume(made):
    result = ruler(*BASE, "--methods", "ntk", "--json", str(made))
    assert result.exit_code != 0 and "add --resume" in result.output
    assert "ntk" not in json.loads(made.read_text())["ruler"]


@pytest.mark.parametrize("damage, says", [
    (lambda d: d.update(ruler=[]), "no 'ruler' table"),
    (lambda d: d["ruler"].update(yarn=[]), "'yarn' is not a table"),
    (lambda d: d["ruler"]["yarn"].pop("predictions"), "'yarn' has no predictions"),
    (lambda d: d["ruler"]["yarn"].update(average=5), "'yarn' has no average"),
    (lambda d: d["ruler"]["yarn"]["scores"]["niah_single_1"].update({"600": "0.5"}), "not a number"),
    (lambda d: d["ruler"].update(ntk={**d["ruler"]["yarn"], "samples": 2}), "do not line up"),
])
def test_a_damaged_json_is_one_error_before_the_model_loads(made, tmp_path, damage, says):
    path = copy(made, tmp_path, damage)
    result = ruler(*BASE, "--methods", "yarn", "--scale", "4", "--json", str(path), "--resume")
    assert result.exit_code != 0 and says in result.output and "are damaged" in result.output
    assert "Traceback" not in result.output


def test_a_factor_label_may_not_hide_a_method(tmp_path):
    factors = tmp_path / "f.json"
    assert ruler("factors", "yarn", "--model", "pocket", "--scale", "4", "--out", str(factors)).exit_code == 0
    result = ruler(*BASE, "--methods", "none", "--factors", f"none={factors}")
    assert result.exit_code != 0 and "also a --methods name" in result.output
    result = ruler(*BASE, "--methods", "none", "--factors", "mine=")
    assert result.exit_code != 0 and "no file after the label" in result.output
    result = ruler(*BASE, "--methods", "none", "--factors", str(tmp_path))
    assert result.exit_code != 0 and "is a folder" in result.output


def test_plots_and_json_in_one_place_and_a_huge_length_are_refused_up_front(tmp_path):
    same = str(tmp_path / "x")
    result = ruler(*BASE, "--methods", "none", "--json", same, "--plots", same)
    assert result.exit_code != 0 and "also the --json file" in result.output
    result = ruler(*BASE[:4], "100000000", *BASE[5:], "--methods", "none")
    assert result.exit_code != 0 and "past the longest RULER prompt" in result.output
    result = ruler(*BASE[:4], "1000000000000", *BASE[5:], "--methods", "none")  # past any token count
    assert result.exit_code != 0 and "--lengths must be at most 134217728 tokens" in result.output


def test_too_short_names_a_length_that_works():
    suite = RulerSuite(load_tokenizer(resolve_model("pocket")))
    with pytest.raises(RopesearchError, match="needs a length of about") as error:
        suite.samples("vt", 300, 1)
    shortest = int(str(error.value).split("about ")[1].split()[0])
    # about: the random names and values of each sample and length move it by a token or two
    assert suite.samples("vt", shortest + 8, 1)[0].prompt_tokens == shortest + 8 - TASKS["vt"].max_new_tokens
    with pytest.raises(RopesearchError, match="needs a length of about"):
        suite.samples("vt", shortest - 8, 1)


def test_essays_beyond_ascii_build_prompts_of_exact_length(tmp_path):
    """Chinese and accented text: a cut among one character's byte tokens leaves U+FFFD, which the
    tokenizer reads as other tokens, and some prompts could never reach their length."""
    rng = random.Random(0)
    pieces = list("草本绿的文の語色で日すです章") + ["Straße", "über", "café", "naïve", " ", " ", "。", "！"]
    (tmp_path / "zh.txt").write_text("".join(rng.choice(pieces) for _ in range(30000)), encoding="utf-8")
    tokenizer = load_tokenizer(resolve_model("smollm2-135m"))
    suite = RulerSuite(tokenizer, str(tmp_path / "zh.txt"))
    for task, length in (("niah_single_2", 1024), ("niah_multikey_1", 2048)):
        for sample in suite.samples(task, length, 4):
            assert len(tokenizer(sample.prompt)["input_ids"]) == sample.prompt_tokens == length - 128
            assert all(sample.prompt.count(answer) == 1 for answer in sample.answers)


def test_lm_eval_keeps_every_length_under_limit_and_takes_a_group_with_its_tasks(tmp_path):
    from ropesearch.tasks.lm_eval_bridge import OfflineTasks, run_lm_eval
    from ropesearch.tasks.ruler_tasks import scores_by_length
    from ropesearch.models import load_model

    ref = resolve_model("pocket")
    model, tokenizer = load_model(ref, device="cpu"), load_tokenizer(ref)
    # the group holds niah_single_1 too (lm-eval refuses a task named twice); --limit 1 with two
    # lengths used to keep the first row alone, and the second length had no score (-1)
    results = run_lm_eval(model, tokenizer, None, ["ropesearch_ruler_niah_single_1", "ropesearch_ruler_niah_single_1"],
                          tmp_path, OfflineTasks(lengths=[600, 700], limit=1, ruler_max_new_tokens=2))
    table = scores_by_length(results["results"])
    assert set(table) == {"ropesearch_ruler_niah_single_1"} and set(table["ropesearch_ruler_niah_single_1"]) == {"600", "700"}
    assert results["n-samples"]["ropesearch_ruler_niah_single_1"]["effective"] == 2
    with pytest.raises(RopesearchError, match="--tasks is empty"):
        run_lm_eval(model, tokenizer, None, [], tmp_path)


def test_without_covered_drops_a_groups_own_tasks():
    from ropesearch.tasks.ruler_tasks import without_covered

    assert without_covered(["ropesearch_ruler", "ropesearch_ruler_vt", "hellaswag", "hellaswag"]) == \
        ["ropesearch_ruler", "hellaswag"]
    assert without_covered(["ropesearch_ruler_vt", "ropesearch_ruler_cwe"]) == ["ropesearch_ruler_vt", "ropesearch_ruler_cwe"]


def test_report_leaves_out_a_damaged_ruler_json_and_reads_on(made, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "good.json").write_text(made.read_text())
    copy(made, folder, lambda d: d["ruler"]["yarn"].pop("samples")).rename(folder / "bad.json")
    (folder / "latin1.json").write_bytes("{\"x\": \"caf\xe9\"}".encode("latin-1"))
    result = ruler("report", str(folder))
    assert result.exit_code == 0, result.output
    report = next(folder.rglob("*.md")).read_text()
    assert "RULER (bad.json): left out" in report and "'yarn' has no samples count" in report
    assert "RULER (good.json): model `pocket`" in report


def test_lm_eval_refuses_a_limit_that_would_cut_ruler_lengths_beside_its_own_tasks(tmp_path):
    from ropesearch.tasks.lm_eval_bridge import OfflineTasks, run_lm_eval
    from ropesearch.models import load_model

    ref = resolve_model("pocket")
    model, tokenizer = load_model(ref, device="cpu"), load_tokenizer(ref)
    with pytest.raises(RopesearchError, match="give --limit 3 or more"):
        run_lm_eval(model, tokenizer, None, ["ropesearch_ruler_vt", "hellaswag"], tmp_path,
                    OfflineTasks(lengths=[600, 700, 800], limit=2))
    assert not any(tmp_path.iterdir())  # refused before any task data was written


def test_a_json_that_is_a_folder_is_named_as_one(tmp_path):
    result = ruler(*BASE, "--methods", "none", "--json", str(tmp_path))
    assert result.exit_code != 0 and "add --resume" not in result.output and str(tmp_path) in result.output


def test_a_cap_above_every_budget_resumes_a_run_without_one(made, tmp_path):
    def uncapped(document):
        for column in document["ruler"].values():
            column["max_new_tokens"] = None
    path = copy(made, tmp_path, uncapped)
    budget = TASKS["niah_single_1"].max_new_tokens
    result = ruler(*BASE[:-1], str(budget), "--methods", "yarn", "--scale", "4", "--json", str(path), "--resume")
    assert result.exit_code == 0 and "nothing left to run" in result.output, result.output
    result = ruler(*BASE[:-1], str(budget - 1), "--methods", "yarn", "--scale", "4", "--json", str(path), "--resume")
    assert result.exit_code != 0 and "--max-new-tokens" in result.output


def test_a_saved_cap_above_every_budget_resumes_with_the_same_cap_or_none(made, tmp_path):
    budget = TASKS["niah_single_1"].max_new_tokens
    path = copy(made, tmp_path, lambda d: [c.update(max_new_tokens=budget + 50) for c in d["ruler"].values()])
    for cap in ([str(budget + 50)], [str(budget)], []):
        args = [*BASE[:-2], *(["--max-new-tokens", *cap] if cap else []), "--methods", "yarn", "--scale", "4"]
        result = ruler(*args, "--json", str(path), "--resume")
        assert result.exit_code == 0 and "nothing left to run" in result.output, (cap, result.output)
    result = ruler(*BASE, "--methods", "yarn", "--scale", "4", "--json", str(path), "--resume")  # a real cap: 2
    assert result.exit_code != 0 and "has --max-new-tokens none, this run 2" in result.output


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def qwen2_like_tokenizer():
    """A byte-level BPE with Qwen2's pre-tokenizer, trained in the test: punctuation and the newlines
    after it are one piece, so ".\\n" is one token, as in Qwen2.5's tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ropesearch.tasks.ruler import NOISE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([stdlib_text("argparse.py"), ("\n" + NOISE) * 200], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_prompts_are_exact_where_the_filler_merges_with_what_follows():
    """Qwen2.5's tokenizer reads ".\\n" as one token: a filler cut after a full stop merges with the
    newline the question starts with, so one more token of filler gives two more tokens of prompt and
    the length was skipped at every cut (vt and niah_multikey_2 at 32k with the Qwen model, 2026-12-07)."""
    tokenizer = qwen2_like_tokenizer()
    assert len(tokenizer(".\n", add_special_tokens=False)["input_ids"]) == 1
    suite = RulerSuite(tokenizer, "builtin")
    for task in ("vt", "niah_multikey_2", "niah_single_1"):
        for length in (1024, 1500, 2048, 3000):
            for sample in suite.samples(task, length, 2):
                want = length - TASKS[task].max_new_tokens
                assert len(tokenizer(sample.prompt)["input_ids"]) == sample.prompt_tokens == want, (task, length)
