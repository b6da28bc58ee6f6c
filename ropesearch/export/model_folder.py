"""Write a transformers model folder (and vLLM overrides, CSV) that carries a factor set."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.export.csv_factors import write_factor_csv
from ropesearch.export.factor_file import check_fits, save_factors
from ropesearch.own_files import atomic_write_text, current_umask
from ropesearch.export.out_folder import export_folder
from ropesearch.export.portable import (add_legacy_rope_keys, model_card, model_files, place_file,
                                        portable_tokenizer_config, serve_script)
from ropesearch.export.transformers_config import apply_to_config, partial_rotary_factor, rope_parameters
from ropesearch.models.loading import ModelRef, load_config, load_model, load_tokenizer, rope_base, saved_as_plain
from ropesearch.rope.factors import RopeFactors

FORMATS = ("hf", "vllm", "csv")


def _local_folder(ref: ModelRef) -> tuple[Path, Path] | None:
    """The folder holding a non-GGUF model's files (a hub id is downloaded into the HF cache if needed),
    and the folder its links may point into: itself, or for a hub cache snapshot its repository folder."""
    if ref.gguf_file:
        return None
    path = Path(ref.path)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(ref.path))
        except Exception as exc:  # the hub client raises many kinds; all mean "not reachable"
            raise RopesearchError(f"could not fetch {ref.path!r} from the Hugging Face hub: {exc}") from None
    in_hub_cache = path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--")
    return path, path.parent.parent if in_hub_cache else path


def _left_out(name: str) -> bool:
    """Whether a top-level file of the source model folder is left out of the export."""
    # config.json is rewritten; the source's card describes another model, ours replaces it
    return name in ("config.json", "README.md") or name.startswith(".")


def export_hf(factors: RopeFactors, ref: ModelRef, out: str | Path, copy: bool = False, overwrite: bool = False,
              allow_start_tokens: bool = False, link: str = "hardlink", provenance: dict | None = None,
              factor_file: str | None = None, protect: dict | None = None) -> Path:
    """A model folder that `AutoModelForCausalLM.from_pretrained(out)` loads with these factors,
    in transformers 5.x and 4.x (see `portable`), self-contained, with a model card.

    Weights and tokenizer of a model folder are hard-linked (copied where that fails, or with
    copy=True / link="copy"; link="symlink" ties the folder to the source); a GGUF model is
    de-quantised and saved as safetensors with its tokenizer. Only the model's regular files are
    carried over: a link out of the model folder is refused (`model_files`). The folder is built
    aside and swapped in whole (`export_folder`).
    """
    out = Path(out)
    config = load_config(ref)
    check_fits(factors, rope_base(config))
    apply_to_config(config, factors, allow_start_tokens)
    with export_folder(out, overwrite, protect) as staging:
        source = _local_folder(ref)
        if source is None:
            try:
                save_model_folder(load_model(ref, dtype=None, device="cpu"), load_tokenizer(ref), config, staging)
            except Exception as exc:  # safetensors' own error type for a failed write (a full disk)
                if type(exc).__name__ != "SafetensorError":
                    raise
                raise OSError(None, str(exc), str(staging / "model.safetensors")) from None
        else:
            for relative, item in model_files(*source, skip=_left_out):
                place_file(item, staging / relative, "copy" if copy else link)
            config.save_pretrained(staging)
        add_legacy_rope_keys(staging)
        portable_tokenizer_config(staging)
        provenance = dict(provenance or {})
        save_factors(factors, staging / "ropesearch_factors.json", provenance=provenance)
        atomic_write_text(staging / "README.md", model_card(factors, ref.spec, provenance, factor_file))
        atomic_write_text(staging / "serve.sh", serve_script(factors.target_context))
        (staging / "serve.sh").chmod(0o777 & ~current_umask())
    return out


def save_model_folder(model, tokenizer, config, out: str | Path, state_dict: dict | None = None) -> Path:
    """Save weights (plain floats, even from GGUF), `config` and tokenizer as a transformers folder."""
    model.config = config
    with saved_as_plain(model):
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
                allow_start_tokens: bool = False, protect: dict | None = None) -> Path:
    out = Path(out)
    config = load_config(ref)
    check_fits(factors, rope_base(config))
    overrides = vllm_overrides(factors, partial_rotary_factor(config), allow_start_tokens)
    model = str(Path(ref.path) / ref.gguf_file) if ref.gguf_file else ref.path
    local = Path(model).exists()
    if local:  # a local model: where it is from serve.sh's folder, never an absolute path
        model = os.path.relpath(Path(model).resolve(), out.resolve())
    with export_folder(out, overwrite, protect) as staging:
        atomic_write_text(staging / "vllm_overrides.json", json.dumps(overrides, indent=2) + "\n")
        atomic_write_text(staging / "serve.sh", serve_script(factors.target_context, model, from_here=local,
                                                             hf_overrides=overrides["hf_overrides"]))
        (staging / "serve.sh").chmod(0o777 & ~current_umask())
    return out


def export_csv(factors: RopeFactors, out: str | Path, overwrite: bool = False, protect: dict | None = None) -> Path:
    out = Path(out)
    with export_folder(out, overwrite, protect) as staging:
        write_factor_csv(factors.long_factor, staging / "long_factor.csv")
        write_factor_csv(factors.short_factor, staging / "short_factor.csv")
    return out
