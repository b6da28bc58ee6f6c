"""Python twins of the CLI commands: what each `ropesearch` command does, callable from code."""

from __future__ import annotations

from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.export import check_fits, export_csv, export_hf, export_vllm, load_factors, read_factor_csv
from ropesearch.export.factor_file import factor_provenance
from ropesearch.models import load_config, resolve_model, rope_base
from ropesearch.rope import RopeBase, RopeFactors, longrope, make_factors


def baseline_factors(method: str, base: RopeBase, scale: float, **params) -> RopeFactors:
    """`ropesearch factors METHOD`: a baseline method's factors."""
    return make_factors(method, base, scale, **params)


def factors_from_csv(base: RopeBase, scale: float, long_csv: str | Path, short_csv: str | Path | None = None,
                     start_tokens: int = 0, attention_factor: float | None = None, **unused) -> RopeFactors:
    """`ropesearch factors longrope --csv`: LongRoPE-style CSV factors as a factor set."""
    if unused:
        raise RopesearchError(f"method longrope does not take {', '.join(sorted(unused))}")
    long_factor = read_factor_csv(long_csv, base.n_factors)
    short_factor = read_factor_csv(short_csv, base.n_factors) if short_csv else None
    return longrope(base, long_factor, short_factor, scale=scale, attention_factor=attention_factor,
                    start_tokens=start_tokens, source=str(long_csv))


def export(factor_file: str | Path, model: str, out: str | Path, fmt: str = "hf", copy: bool = False,
           overwrite: bool = False, allow_start_tokens: bool = False, symlink: bool = False) -> Path:
    """`ropesearch export`: a factor file as a model folder (hf), vLLM overrides or CSV.

    hf folders are self-contained (weights hard-linked or copied) unless symlink=True.
    """

    ref = resolve_model(model)
    factors = load_factors(factor_file)
    # --out never is, holds or lies inside an input
    protect = {"the factor file": factor_file, "the model": Path(ref.path) / (ref.gguf_file or "")}
    if fmt == "hf":
        provenance = factor_provenance(factor_file)
        return export_hf(factors, ref, out, copy=copy, overwrite=overwrite, allow_start_tokens=allow_start_tokens,
                         link="symlink" if symlink else "hardlink", provenance=provenance,
                         factor_file=Path(factor_file).name, protect=protect)
    if fmt == "vllm":
        return export_vllm(factors, ref, out, overwrite=overwrite, allow_start_tokens=allow_start_tokens,
                           protect=protect)
    if fmt == "csv":
        check_fits(factors, rope_base(load_config(ref)), source=f"factor file {factor_file}")
        return export_csv(factors, out, overwrite=overwrite, protect=protect)
    raise RopesearchError(f"unknown export format {fmt!r}: choose hf, vllm or csv")
