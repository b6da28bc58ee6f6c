"""The factor sets a task run compares on one model (`--methods`, `--factors`, `--scale`): their
names (without loading anything) and the sets themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ropesearch.errors import RopesearchError
from ropesearch.export.factor_file import load_factors
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import RopeFactors, make_factors
from ropesearch.evaluate.baselines import factor_labels


def method_names(methods: str | Sequence[str]) -> list[str]:
    """--methods as a list: "none, yarn" -> ["none", "yarn"] (a list passes through)."""
    return [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)


def comparison_names(methods: str | Sequence[str], factor_files: Sequence[str]) -> list[str]:
    """The names `comparison_sets` gives, without loading a model: methods, then factor file labels."""
    names, labels = method_names(methods), factor_labels(factor_files)
    for label in labels:
        if label in names:
            raise RopesearchError(f"--factors: the label {label!r} is also a --methods name, and one column would "
                                  f"hide the other: name the file's column (OTHER={labels[label]})")
    return names + list(labels)


def comparison_sets(model, methods: str | Sequence[str], factor_files: Sequence[str], scale: float | None,
                    longest: int | None) -> dict[str, RopeFactors | None]:
    """Named factor sets to compare on one model: baselines ("none" leaves it unpatched) and files."""
    base = rope_base(model.config)
    names = method_names(methods)
    comparison_names(names, factor_files)  # no label hides a method
    scale = scale or max(1.0, (longest or base.original_context) / base.original_context)
    sets: dict[str, RopeFactors | None] = {}
    for name in names:
        sets[name] = None if name == "none" else make_factors(name, base, scale)
    for label, path in factor_labels(factor_files).items():
        sets[label] = load_factors(path, expect=base)
    if not sets:
        raise RopesearchError("nothing to compare: give --methods and/or --factors")
    return sets


@dataclass(frozen=True)
class Comparison:
    """The factor sets a task run compares on one model (`--model`, `--methods`, `--factors`,
    `--scale`, `--device`, `--dtype`), shared by passkey, RULER and lm-eval."""

    model: str
    methods: str | Sequence[str] = "none"
    factor_files: Sequence[str] = ()
    scale: float | None = None
    device: str | None = None
    dtype: object = None

    def names(self) -> list[str]:
        return comparison_names(self.methods, self.factor_files)

    def load(self, tokenizer=None):
        """(model, tokenizer), the model on `device` in `dtype` (a tokenizer given is kept, not loaded again)."""
        ref = resolve_model(self.model)
        return load_model(ref, device=self.device, dtype=self.dtype), tokenizer or load_tokenizer(ref)

    def sets(self, model, longest: int | None) -> dict[str, RopeFactors | None]:
        return comparison_sets(model, self.methods, self.factor_files, self.scale, longest)
