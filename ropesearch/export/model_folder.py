"""Write a transformers model folder (and vLLM overrides, CSV) that carries a factor set."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.export.csv_factors import write_factor_csv
from ropesearch.export.factor_file import atomic_write_text, check_fits, save_factors
from ropesearch.export.portable import (add_legacy_rope_keys, model_card, place_file, portable_tokenizer_config,
                                        serve_script)
from ropesearch.export.transformers_config import apply_to_config, partial_rotary_factor, rope_parameters
from ropesearch.models.loading import ModelRef, load_config, load_model, load_tokenizer, rope_base
from ropesearch.rope.factors import RopeFactors

FORMATS = ("hf", "vllm", "csv")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RopesearchError(f"output folder {out} is not empty: choose another or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _local_folder(ref: ModelRef) -> Path | None:
    """The folder holding a non-GGUF model's files, downloading a hub id into the HF cache if needed."""
    if ref.gguf_file:
        return None
    path = Path(ref.path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.path))
    except Exception as exc:  # the hub client raises many kinds; all mean "not reachable"
        raise RopesearchError(f"could not fetch {ref.path!r} from the Hugging Face hub: {exc}") from None


def export_hf(factors: RopeFactors, ref: ModelRef, out: str | Path, copy: bool = False, overwrite: bool = False,
              allow_start_tokens: bool = False, link: str = "hardlink", provenance: dict | None = None,
              factor_file: str | None = None) -> Path:
    """A model folder that `AutoModelForCausalLM.from_pretrained(out)` loads with these factors,
    in transformers 5.x and 4.x (see `portable`), self-contained, with a model card.

    Weights and tokenizer of a model folder are hard-linked (copied where that fails, or with
    copy=True / link="copy"; link="symlink" ties the folder to the source); a GGUF model is
    de-quantised and saved as safetensors with its tokenizer.
    """
    out = Path(out)
    config = load_config(ref)
    check_fits(factors, rope_base(config))
    apply_to_config(config, factors, allow_start_tokens)
    _prepare_out(out, overwrite)
    source = _local_folder(ref)
    if source is None:
        save_model_folder(load_model(ref, dtype=None, device="cpu"), load_tokenizer(ref), config, out)
    else:
        for item in sorted(source.iterdir()):
            if item.name == "config.json" or item.name.startswith("."):
                continue
            if item.name == "README.md":
                continue  # the source's card describes another model; ours replaces it
            place_file(item, out / item.name, "copy" if copy else link)
        config.save_pretrained(out)
    add_legacy_rope_keys(out)
    portable_tokenizer_config(out)
    provenance = dict(provenance or {})
    save_factors(factors, out / "ropesearch_factors.json", provenance=provenance)
    atomic_write_text(out / "README.md", model_card(factors, ref.spec, provenance, factor_file))
    atomic_write_text(out / "serve.sh", serve_script(factors.target_context))
    (out / "serve.sh").chmod(0o755)
    return out


def save_model_folder(model, tokenizer, config, out: str | Path, state_dict: dict | None = None) -> Path:
    """Save weights (plain floats, even from GGUF), `config` and tokenizer as a transformers folder."""
    model.hf_quantizer = None  # GGUF weights arrive de-quantised
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.config = config
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    return Path(out)


def vllm_overrides(factors: RopeFactors, partial_rotary_factor: float | None = None, allow_start_tokens: bool = False) -> dict:
    """What to pass to vLLM: `LLM(model, hf_overrides=..., max_model_len=...)`."""
    return {
        "hf_overrides": {
            "rope_parameters": rope_parameters(factors, partial_rotary_factor, allow_start_tokens),
            "max_position_embeddings": factors.target_context,
        },
        "max_model_len": factors.target_context,
    }


def export_vllm(factors: RopeFactors, ref: ModelRef, out: str | Path, overwrite: bool = False,
                allow_start_tokens: bool = False) -> Path:
    out = Path(out)
    config = load_config(ref)
    check_fits(factors, rope_base(config))
    overrides = vllm_overrides(factors, partial_rotary_factor(config), allow_start_tokens)
    _prepare_out(out, overwrite)
    atomic_write_text(out / "vllm_overrides.json", json.dumps(overrides, indent=2) + "\n")
    model_arg = str(Path(ref.path) / ref.gguf_file) if ref.gguf_file else ref.path
    if Path(model_arg).exists():  # a local model: where it is from serve.sh's folder, never an absolute path
        model_arg = "$here/" + os.path.relpath(Path(model_arg).resolve(), out.resolve())
    hf_overrides = shlex.quote(json.dumps(overrides["hf_overrides"]))
    atomic_write_text(
        out / "serve.sh",
        "#!/bin/sh\n# vLLM uses long_factor at every length once max_model_len exceeds the original window.\n"
        "# Set MODEL to serve a model from elsewhere (default: where it was when this was exported).\n"
        'here="$(cd "$(dirname "$0")" && pwd)"\n'
        f'exec vllm serve "${{MODEL:-{model_arg}}}" --max-model-len {factors.target_context} '
        f"--hf-overrides {hf_overrides} \"$@\"\n",
    )
    (out / "serve.sh").chmod(0o755)
    return out


def export_csv(factors: RopeFactors, out: str | Path, overwrite: bool = False) -> Path:
    out = Path(out)
    _prepare_out(out, overwrite)
    write_factor_csv(factors.long_factor, out / "long_factor.csv")
    write_factor_csv(factors.short_factor, out / "short_factor.csv")
    return out
