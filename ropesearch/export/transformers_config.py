"""Factor sets as transformers `rope_parameters` (rope_type "longrope"), and back."""

from __future__ import annotations

import logging
import re

from ropesearch.errors import RopesearchError
from ropesearch.rope.factors import RopeBase, RopeFactors
from ropesearch.rope.methods import METHODS, make_factors

VLLM_ONLY_KEYS = frozenset({"long_mscale", "short_mscale"})  # written for vLLM; transformers ignores them


class _VllmKeysFilter(logging.Filter):
    """Drops transformers' 'Unrecognized keys in `rope_parameters`' warning when the keys are only the
    vLLM ones we write on purpose (every export and eval printed it); any other unknown key still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Unrecognized keys in `rope_parameters`"):
            return True
        return not set(re.findall(r"'(\w+)'", message.partition(":")[2])) <= VLLM_ONLY_KEYS


def quiet_vllm_keys_warning() -> None:
    """Install the filter once on transformers' RoPE logger."""
    logger = logging.getLogger("transformers.modeling_rope_utils")
    if not any(isinstance(f, _VllmKeysFilter) for f in logger.filters):
        logger.addFilter(_VllmKeysFilter())


quiet_vllm_keys_warning()


def rope_parameters(factors: RopeFactors, partial_rotary_factor: float | None = None, allow_start_tokens: bool = False) -> dict:
    """The `config.rope_parameters` that makes transformers (and vLLM) apply these factors.

    transformers reads `attention_factor`; vLLM ignores it and reads `long_mscale` and
    `short_mscale`, so all three are written with the same value. Dynamic NTK has no
    longrope form and is written as transformers' own "dynamic" type.
    """
    base = factors.base
    if factors.start_tokens and not allow_start_tokens:
        raise RopesearchError(
            f"start_tokens={factors.start_tokens} has no equivalent in transformers or vLLM configs; "
            "export anyway with --ignore-start-tokens (positions below n̂ then use the scaled RoPE too)"
        )
    params: dict = {"rope_theta": base.rope_theta}
    if factors.dynamic_factor is not None:
        params.update(rope_type="dynamic", factor=factors.dynamic_factor)
    else:
        params.update(
            rope_type="longrope",
            long_factor=list(factors.long_factor),
            short_factor=list(factors.short_factor),
            original_max_position_embeddings=base.original_context,
            factor=factors.scale,
            attention_factor=factors.attention_factor,
            long_mscale=factors.attention_factor,
            short_mscale=factors.attention_factor,
        )
    if partial_rotary_factor not in (None, 1.0):
        params["partial_rotary_factor"] = partial_rotary_factor
    return params


def partial_rotary_factor(config) -> float | None:
    """The config's share of rotated head dims, wherever this model keeps it (None: not set)."""
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))


def apply_to_config(config, factors: RopeFactors, allow_start_tokens: bool = False) -> None:
    """Rewrite a transformers config in place: new rope_parameters, max_position_embeddings = target."""
    config.rope_parameters = rope_parameters(factors, partial_rotary_factor(config), allow_start_tokens)
    config.max_position_embeddings = factors.target_context
    if hasattr(config, "original_max_position_embeddings"):
        # Phi-3 keeps the pretrained window outside rope_parameters and transformers prefers it
        config.original_max_position_embeddings = factors.base.original_context


def factors_from_rope_parameters(params: dict, base: RopeBase, target_context: int) -> RopeFactors:
    """A longrope `rope_parameters` dict (e.g. from a Phi-3 config) as factors."""
    if params.get("rope_type") != "longrope":
        raise RopesearchError(f"rope_parameters has rope_type {params.get('rope_type')!r}, expected 'longrope'")
    return RopeFactors(
        base=base,
        long_factor=params["long_factor"],
        short_factor=params["short_factor"],
        target_context=target_context,
        attention_factor=params.get("attention_factor") or params.get("long_mscale") or 1.0,
        method="longrope",
    )


# transformers rope_type -> our method, which reads its parameters from rope_parameters by name
_AS_IS = {m.rope_type: m for m in METHODS.values() if m.rope_type}


def factors_as_configured(config, base: RopeBase) -> RopeFactors:
    """The RoPE a config itself carries (`--method as-is`): what transformers applies when it loads
    the folder, e.g. an exported longrope folder, a YaRN or Llama-3 model, or plain RoPE."""

    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return make_factors("none", base, 1.0)
    if rope_type == "longrope":
        return factors_from_rope_parameters(params, base, int(config.max_position_embeddings))
    if rope_type not in _AS_IS:
        raise RopesearchError(f"--method as-is: rope_type {rope_type!r} of this model has no ropesearch form "
                              f"(known: default, longrope, {', '.join(_AS_IS)})")
    method = _AS_IS[rope_type]
    extra = {p.name: params[p.name] for p in method.params if params.get(p.name) is not None}
    return make_factors(method.name, base, float(params.get("factor", 1.0)), **extra)
