"""What makes an exported model folder load the same everywhere: transformers 5.x and 4.x, vLLM.

transformers 5.x reads `rope_parameters`; 4.x (from 4.51.0, the first release whose Llama
rotary module switches between short and long factors) reads the legacy `rope_scaling`, a
top-level `rope_theta`, and takes the pretrained window from a top-level
`original_max_position_embeddings` (without it, 4.x compares with `max_position_embeddings`,
the target, and never uses the long factors). Both sets of keys are written, with equal values.
The tokenizer class is named as both versions know it, and the folder holds its own weights
and a model card, so it can be copied anywhere.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.own_files import atomic_write_text
from ropesearch.rope.factors import RopeFactors
from ropesearch.tables import markdown_lines

OLDEST_TRANSFORMERS_4 = "4.51.0"  # first 4.x whose Llama rotary module applies longrope's short/long switch
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # 5.x's "TokenizersBackend" does not exist in 4.x
LINK_MODES = ("hardlink", "copy", "symlink")


def add_legacy_rope_keys(folder: Path) -> None:
    """Rewrite FOLDER/config.json so that transformers 4.x reads the same RoPE as 5.x."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    params = dict(config.get("rope_parameters") or {})
    if not params or "rope_type" not in params:
        return
    config["rope_theta"] = params["rope_theta"]
    legacy = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if "original_max_position_embeddings" in params:
        config["original_max_position_embeddings"] = params["original_max_position_embeddings"]
    config["rope_scaling"] = legacy
    if "partial_rotary_factor" in params:
        config["partial_rotary_factor"] = params["partial_rotary_factor"]
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def portable_tokenizer_config(folder: Path) -> None:
    """Name the fast tokenizer class that transformers 4.x and 5.x both load from tokenizer.json."""
    path = folder / "tokenizer_config.json"
    if not path.is_file() or not (folder / "tokenizer.json").is_file():
        return
    if path.is_symlink():  # never write through a link into the source model
        text = path.read_text()
        path.unlink()
        path.write_text(text)
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        config.pop("backend", None)
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def model_files(folder: Path, root: Path | None = None, skip=lambda name: False) -> list[tuple[str, Path]]:
    """The files of model folder FOLDER that an export carries over, as (path inside it, file to place):
    regular files only, top-level names for which SKIP is true left out. A link to a file inside ROOT
    (the folder itself; for a hub cache snapshot, its repository folder, whose blobs the snapshot links
    to) stands for that file; any other link (to a folder, out of ROOT, dangling) and any special file
    is refused: an export never follows a link out of the model."""
    root = (root or folder).resolve()
    found: list[tuple[str, Path]] = []

    def refuse(relative: str, problem: str) -> RopesearchError:
        return RopesearchError(f"model folder {folder}: {relative} {problem}: an export copies only the model's own "
                               "regular files and never follows a link out of it; put the file itself there (or "
                               "remove it) and export again")

    def visit(directory: Path, prefix: str) -> None:
        for item in sorted(directory.iterdir()):
            relative = prefix + item.name
            if not prefix and skip(item.name):
                continue
            if item.is_symlink():
                real = item.resolve()
                if not real.exists():
                    raise refuse(relative, f"is a symbolic link to {real}, which does not exist")
                if real.is_dir():
                    raise refuse(relative, f"is a symbolic link to the folder {real}")
                if root not in real.parents or not real.is_file():
                    raise refuse(relative, f"is a symbolic link to {real}, outside the model folder")
                found.append((relative, real))
            elif item.is_dir():
                visit(item, relative + "/")
            elif item.is_file():
                found.append((relative, item))
            else:
                raise refuse(relative, "is not a regular file (a FIFO, socket or device)")

    visit(folder, "")
    return found


def place_file(source: Path, target: Path, mode: str) -> None:
    """Put the regular file SOURCE at TARGET: a hard link (a copy where the file system cannot link),
    a copy, or a symlink. A failed copy (a full disk) is an OSError naming TARGET, not SOURCE."""
    if mode not in LINK_MODES:
        raise RopesearchError(f"link mode {mode!r} is not one of {', '.join(LINK_MODES)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        os.symlink(source.resolve(), target)
        return
    if mode == "hardlink":
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    try:
        shutil.copy2(source, target, follow_symlinks=False)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None


def original_window_caveat(factors: RopeFactors, provenance: dict | None = None) -> str | None:
    """Why these factors may be worse than the unscaled model at the original window (transformers
    applies the attention factor at every length), or None when they are the unscaled model there
    or a search's short guard measured them within its tolerance."""
    if (provenance or {}).get("short_guard"):
        return None
    problems = []
    if any(abs(f - 1.0) > 1e-9 for f in factors.short_factor):
        problems.append("short_factor is not all 1")
    if factors.attention_factor > 1.001:
        problems.append(f"the attention factor {factors.attention_factor:.4g} applies at every length")
    if not problems:
        return None
    return (f"at or below {factors.base.original_context} tokens this is not the unscaled model ("
            + "; ".join(problems) + "): compare with `ropesearch baselines --methods none --factors ...`")


WHOSE_ROPE = {"transformers": "transformers'", "vllm": "vLLM's", "both": "both runtimes'", "original": "the unscaled"}


def runtime_table(n: int | str) -> list[str]:
    """Markdown: which keys of the config each runtime honours and what it runs at or below `n` tokens
    (the README shows it with n = "N"; a test keeps the two the same)."""
    return markdown_lines(["runtime", "reads", f"at or below {n} tokens", "ignores"], [
        ["transformers", "`short_factor`, `long_factor`, `attention_factor`",
         "`short_factor`, with `attention_factor` (it applies that one factor at every length)",
         "`short_mscale`, `long_mscale`"],
        [f"vLLM (0.11.1 on), `--max-model-len` > {n}", "`long_factor`, `long_mscale`",
         "`long_factor` with `long_mscale`: the long set at every length, short prompts included",
         "`short_factor`, `short_mscale`, `attention_factor`"],
        [f"vLLM, `--max-model-len` <= {n}", "`short_factor`, `short_mscale`", "`short_factor` with `short_mscale`",
         "`long_factor`, `long_mscale`, `attention_factor`"]])


def runtime_knobs(factors: RopeFactors, provenance: dict | None = None) -> list[str]:
    """Which keys of the config each runtime honours, and what that makes of the original window."""
    n = factors.base.original_context
    training = (provenance or {}).get("training") or {}
    kept = training.get("mixed_window_rope") if training.get("mixed_window") else None
    lines = [f"What each runtime reads (`rope_parameters`), and what it runs at or below {n} tokens:", "",
             *runtime_table(n)]
    if kept:
        lines += ["", f"This model was fine-tuned with {training['mixed_window']:.0%} of its micro-batches at {n} tokens "
                  f"with {WHOSE_ROPE.get(kept, kept)} RoPE there (`mixed_window_rope: {kept}`)."]
    return lines


def _scores_lines(provenance: dict) -> list[str]:
    scores = provenance.get("scores") or {}
    if not scores:
        return ["- Scores: none recorded in the factor file."]
    return ["- Scores recorded by the search (perplexity on its own windows): "
            + ", ".join(f"`{k}` = {v:.4f}" if isinstance(v, float) else f"`{k}` = {v}" for k, v in scores.items())]


def model_card(factors: RopeFactors, model_spec: str, provenance: dict, factor_file: str | None) -> str:
    """The exported folder's README.md: what was extended, how, and how to load it."""
    base = factors.base
    equal = factors.short_factor == factors.long_factor
    lines = [
        f"# {model_spec}, RoPE extended {base.original_context} -> {factors.target_context} tokens "
        f"(x{factors.scale:g})", "",
        f"This folder is `{model_spec}` with its RoPE rescaled by ropesearch "
        f"(method `{factors.method}`); the weights are unchanged.", "",
        f"- Context: trained at {base.original_context} tokens, extended to {factors.target_context} "
        f"(`max_position_embeddings`).",
        f"- RoPE: rope_theta {base.rope_theta:g}, {base.rotary_dim} rotary dims, {base.n_factors} factors per set, "
        f"attention factor {factors.attention_factor:.6g}.",
        "- Short factors " + ("equal the long ones." if equal else
                              f"(at or below {base.original_context} tokens) differ from the long ones."),
        f"- Factors from: `{factor_file or 'a factor set'}`; model `{provenance.get('model', model_spec)}`, "
        f"data `{provenance.get('data', '?')}`, objective `{provenance.get('objective', '?')}`, "
        f"ropesearch {provenance.get('ropesearch_version', '?')}, {provenance.get('created', '?')}.",
        *_scores_lines(provenance),
        *(["- The same windows at the target with the baselines: "
           + ", ".join(f"{k} {v:.4f}" for k, v in provenance["baselines"].items()) + "."]
          if provenance.get("baselines") else []),
        *([f"- Short guard: {provenance['short_guard']['length']} tokens kept within "
           f"{provenance['short_guard']['tolerance']:.0%} of the unscaled model "
           f"({provenance['short_guard']['unscaled_ppl']:.3f} -> at most {provenance['short_guard']['capped_ppl']:.3f} "
           "on the search windows)."] if provenance.get("short_guard") else []),
        *([f"- Caveat: {original_window_caveat(factors, provenance)}."]
          if original_window_caveat(factors, provenance) else []),
        "- `ropesearch_factors.json` in this folder is the factor file itself.", "",
        "## Load it", "",
        "transformers 5.x, and 4.x from " + OLDEST_TRANSFORMERS_4 + " (config.json carries both `rope_parameters` "
        "and the legacy `rope_scaling`):", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")",
        "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")",
        "```", "",
        *runtime_knobs(factors, provenance), "",
        "vLLM:", "",
        "```sh",
        f"vllm serve path/to/this/folder --max-model-len {factors.target_context}   # or: sh serve.sh",
        "```", "",
    ]
    return "\n".join(lines)


# sh lines that set $here to the folder the script is in, whatever its name holds (spaces, quotes,
# $, backticks, newlines): no path is ever part of the script's code. `&& echo .` then `%??` keeps
# the trailing newlines a command substitution drops; CDPATH= stops cd from printing a path.
_HERE = ('dir=$(dirname -- "$0" && echo .) || exit 1\n'
         'here=$(CDPATH= cd -- "${dir%??}" && pwd && echo .) || exit 1\n'
         'here=${here%??}\n')


def serve_script(target_context: int, model: str | None = None, from_here: bool = True,
                 hf_overrides: dict | None = None) -> str:
    """serve.sh for an exported folder: serves the folder it sits in, wherever it was moved; or MODEL
    (a path relative to that folder when FROM_HERE, else a hub id), unless $MODEL names another, with
    vLLM's --hf-overrides. Every path and value is one shell-quoted word: none is ever run as code."""
    lines = ["#!/bin/sh"]
    if model is None:
        lines += ["# Serve this folder with vLLM (long_factor at every length once max-model-len exceeds the original "
                  "window).", _HERE.rstrip("\n"), f'exec vllm serve "$here" --max-model-len {int(target_context)} "$@"']
    else:
        quoted = f'"$here"/{shlex.quote(model)}' if from_here else shlex.quote(model)
        overrides = f" --hf-overrides {shlex.quote(json.dumps(hf_overrides))}" if hf_overrides else ""
        lines += ["# vLLM uses long_factor at every length once max_model_len exceeds the original window.",
                  "# Set MODEL to serve a model from elsewhere (default: where it was when this was exported).",
                  _HERE.rstrip("\n"), "model=${MODEL:-}", f'if [ -z "$model" ]; then model={quoted}; fi',
                  f'exec vllm serve "$model" --max-model-len {int(target_context)}{overrides} "$@"']
    return "\n".join(lines) + "\n"
