"""Plan files: a model, its data, and stages in order, validated into typed dataclasses.

    name: smollm2-progressive
    model: smollm2-135m
    data: {search: books/, finetune: books/, evaluate: builtin}
    stages:
      - search: {target: 32768, space: fast, time_minutes: 3}
      - finetune: {length: 32768, steps: 200, global_batch: 8, lr: 2.0e-5}
      - search: {target: 131072, relative: true, space: fast, time_minutes: 4}
      - recover-short: {lengths: [8192, 16384], high: 1.25, time_minutes: 3}
      - export: {formats: [hf, vllm, csv]}
      - evaluate: {lengths: [8192, 16384, 32768, 65536, 131072], methods: [ntk, yarn], passkey: true}
      - report: {}

A `passkey: {lengths: [...], trials: 2, baseline_trials: 1}` stage runs passkey retrieval on its own,
resumable by (length, depth) across sessions: for lengths where one trial is a long prefill.

Optional: `pack: true` joins documents into windows (for targets longer than any document);
`holdout: {fraction: 0.4, seed: 0}` sets aside a seeded share of the documents (by characters)
that no search or fine-tuning stage reads and the evaluate stage scores on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ropesearch import resources
from ropesearch.errors import RopesearchError
from ropesearch.pipeline.finetune import FinetuneConfig
from ropesearch.validate import check_device, check_fields


@dataclass(frozen=True)
class SearchStage:
    target: int
    space: str = "fast"
    objective: str | None = None
    relative: bool = False  # search on top of the previous stage's factors (after fine-tuning)
    time_minutes: float | None = None
    max_evals: int | None = None
    samples: int | None = None
    seed: int = 0
    short_tolerance: float | None = 0.01  # the short guard (see search/short_guard.py); null: off
    workers: int | None = None  # score on Ray workers (as search --workers; ray_address, gpus_per_worker too)
    ray_address: str | None = None
    gpus_per_worker: int | None = None


@dataclass(frozen=True)
class RecoverShortStage:
    lengths: tuple[int, ...] = ()  # default: the original window and twice it
    high: float = 1.25  # ceiling of the short factors (absolute)
    space: str = "fast"
    time_minutes: float | None = None
    max_evals: int | None = None
    samples: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ExportStage:
    formats: tuple[str, ...] = ("hf", "vllm", "csv")


@dataclass(frozen=True)
class EvaluateStage:
    lengths: tuple[int, ...] = ()
    methods: tuple[str, ...] = ("ntk", "yarn")
    samples: int = 4
    seed: int = 0
    heldout: bool = True  # leave out the documents the last search stage scored on
    passkey: bool = False
    passkey_lengths: tuple[int, ...] = ()  # default: the evaluation lengths
    passkey_depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    passkey_trials: int = 3
    native: bool = False  # also the unscaled model reading the same text in windows of its own length
    unscaled: bool = True  # the unscaled model at every length (false: only its native-window column)
    baseline_scale: str = "target"  # baselines at the final target's scale at every length, or "length"


@dataclass(frozen=True)
class PasskeyStage:
    """Passkey retrieval of the current model and factors against baselines on the starting model,
    resumable cell by cell (one cell: a length and a depth; at 1M tokens a trial is a 1M prefill)."""
    lengths: tuple[int, ...] = ()  # default: the original window x 2^k up to the target
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    trials: int = 3  # keys per length and depth, found factors
    baseline_trials: int | None = None  # keys per length and depth for the baselines (default: trials)
    methods: tuple[str, ...] = ("ntk", "yarn")  # baselines at the target's scale; none: the unscaled model
    seed: int = 0


@dataclass(frozen=True)
class ReportStage:
    pass


STAGE_TYPES: dict[str, type] = {
    "search": SearchStage,
    "finetune": FinetuneConfig,
    "recover-short": RecoverShortStage,
    "export": ExportStage,
    "evaluate": EvaluateStage,
    "passkey": PasskeyStage,
    "report": ReportStage,
}


@dataclass(frozen=True)
class Stage:
    kind: str
    name: str  # folder name in the run directory: NN-kind
    settings: Any


@dataclass(frozen=True)
class Holdout:
    fraction: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class Plan:
    name: str
    model: str
    data: dict[str, str]  # search, finetune, evaluate -> data spec
    stages: tuple[Stage, ...]
    device: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    pack: bool = False  # windows joined from several documents (search, recovery, evaluation)
    holdout: Holdout | None = None


def _settings(kind: str, values: Any, where: str):
    return _settings_of(STAGE_TYPES[kind], values, where, kind)


def _settings_of(cls: type, values: Any, where: str, label: str):
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise RopesearchError(f"{where}: settings of a {label} stage must be a mapping" if label in STAGE_TYPES
                              else f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RopesearchError(f"{where}: unknown {label} setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    from ropesearch.units import parse_token_list, parse_tokens

    values = dict(values)
    for key in ("target", "length"):  # token counts may be written 32k, 1M
        if isinstance(values.get(key), (str, int)):  # ints too: bounded like the rest
            values[key] = parse_tokens(values[key], f"{where}: {key}")
    for key in ("lengths", "passkey_lengths"):
        if isinstance(values.get(key), list) and any(isinstance(v, str) for v in values[key]):
            values[key] = tuple(parse_token_list(values[key], f"{where}: {key}"))
    values = check_fields(cls, values, f"{where}:")
    try:
        settings = cls(**values)
    except TypeError as exc:
        raise RopesearchError(f"{where}: {exc}") from None
    problem = _stage_problem(label, settings)
    if problem:
        raise RopesearchError(f"{where}: {problem}")
    return settings


def _stage_problem(kind: str, s) -> str | None:
    """Ranges and names the types alone do not pin down (None: fine)."""
    from ropesearch.export.model_folder import FORMATS
    from ropesearch.rope.methods import METHODS
    from ropesearch.search.objectives import OBJECTIVES
    from ropesearch.search.space import load_space

    checks = []
    if kind in ("search", "recover-short"):
        checks += [(s.time_minutes is None or s.time_minutes > 0, "time_minutes must be > 0"),
                   (s.max_evals is None or s.max_evals >= 1, "max_evals must be >= 1"),
                   (s.samples is None or s.samples >= 1, "samples must be >= 1"),
                   (s.seed >= 0, "seed must be >= 0")]
        load_space(s.space)  # a missing or invalid space fails here, before any stage runs
    if kind == "search":
        checks += [(s.target >= 2, f"target must be a length >= 2 tokens, got {s.target}"),
                   (s.objective is None or s.objective in OBJECTIVES,
                    f"objective must be one of {', '.join(OBJECTIVES)}, got {s.objective!r}"),
                   (s.short_tolerance is None or s.short_tolerance >= 0,
                    f"short_tolerance must be >= 0 (or null: no guard), got {s.short_tolerance}")]
    if kind == "recover-short":
        checks += [(all(n >= 2 for n in s.lengths), "lengths must be >= 2 tokens"), (s.high > 0, "high must be > 0")]
    if kind == "export":
        checks += [(bool(s.formats) and set(s.formats) <= set(FORMATS),
                    f"formats must be a non-empty list of {', '.join(FORMATS)}, got {list(s.formats)}")]
    if kind == "evaluate":
        known = list(METHODS)
        checks += [(all(n >= 2 for n in s.lengths + s.passkey_lengths), "lengths must be >= 2 tokens"),
                   (set(s.methods) <= set(known), f"methods must be among {', '.join(known)}, got {list(s.methods)}"),
                   (s.samples >= 1 and s.passkey_trials >= 1, "samples and passkey_trials must be >= 1"),
                   (all(0 <= d <= 1 for d in s.passkey_depths), "passkey_depths must lie in [0, 1]"),
                   (s.seed >= 0, "seed must be >= 0"),
                   (s.baseline_scale in ("target", "length"),
                    f"baseline_scale must be target or length, got {s.baseline_scale!r}")]
    if kind == "passkey":
        known = list(METHODS)
        checks += [(all(n >= 2 for n in s.lengths), "lengths must be >= 2 tokens"),
                   (set(s.methods) <= set(known), f"methods must be among {', '.join(known)}, got {list(s.methods)}"),
                   (s.trials >= 1 and (s.baseline_trials is None or s.baseline_trials >= 1),
                    "trials and baseline_trials must be >= 1"),
                   (bool(s.depths) and all(0 <= d <= 1 for d in s.depths), "depths must lie in [0, 1]"),
                   (len(set(s.lengths)) == len(s.lengths), f"lengths must differ, got {list(s.lengths)}"),
                   (len({f"{d:g}" for d in s.depths}) == len(s.depths), f"depths must differ, got {list(s.depths)}"),
                   (s.seed >= 0, "seed must be >= 0")]
    if kind == "holdout":
        checks += [(0 < s.fraction < 1, f"holdout.fraction must be a number strictly between 0 and 1, got {s.fraction}"),
                   (s.seed >= 0, "holdout.seed must be >= 0")]
    return next((message for ok, message in checks if not ok), None)


def plan_from_dict(data: Any, where: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise RopesearchError(f"{where} must be a YAML mapping")
    allowed = {"name", "model", "data", "stages", "device", "description", "pack", "holdout"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RopesearchError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    for key in ("name", "model", "stages"):
        if key not in data:
            raise RopesearchError(f"{where}: missing key {key!r}")
    for key in ("name", "model", "description", "device"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise RopesearchError(f"{where}: {key} must be a string, got {data[key]!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", data["name"]):
        raise RopesearchError(f"{where}: name {data['name']!r} must be letters, digits, '.', '_' or '-' "
                              "(it names the run directory)")
    check_device(data.get("device"), flag=f"{where}: device")
    raw_data = data.get("data", "builtin")
    if isinstance(raw_data, str):
        sources = {"search": raw_data, "finetune": raw_data, "evaluate": raw_data}
    elif isinstance(raw_data, dict) and set(raw_data) <= {"search", "finetune", "evaluate"}:
        default = raw_data.get("search", "builtin")
        sources = {k: raw_data.get(k, default) for k in ("search", "finetune", "evaluate")}
    else:
        raise RopesearchError(f"{where}: data must be a data spec or a mapping of search/finetune/evaluate")
    for role, spec in sources.items():
        if not isinstance(spec, str) or not spec:
            raise RopesearchError(f"{where}: data.{role} must be a data spec (a folder, a file, builtin or a dataset "
                                  f"name), got {spec!r}")
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise RopesearchError(f"{where}: stages must be a non-empty list")
    stages = []
    for number, entry in enumerate(data["stages"], 1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RopesearchError(f"{where}: stage {number} must be one '{{kind: settings}}' mapping")
        kind, values = next(iter(entry.items()))
        if kind not in STAGE_TYPES:
            raise RopesearchError(f"{where}: stage {number} has unknown kind {kind!r} (known: {', '.join(STAGE_TYPES)})")
        settings = _settings(kind, values, f"{where}: stage {number} ({kind})")
        stages.append(Stage(kind, f"{number:02d}-{kind}", settings))
    _check_order(stages, where)
    pack = data.get("pack", False)
    if not isinstance(pack, bool):
        raise RopesearchError(f"{where}: pack must be true or false, got {pack!r}")
    holdout = None
    if data.get("holdout") is not None:
        holdout = _settings_of(Holdout, data["holdout"], f"{where}: holdout", "holdout")
    return Plan(name=str(data["name"]), model=str(data["model"]), data=sources, stages=tuple(stages),
                device=data.get("device"), description=str(data.get("description", "")), pack=pack, holdout=holdout)


def _check_order(stages: list[Stage], where: str) -> None:
    have_factors = False
    for stage in stages:
        needs = stage.kind in ("finetune", "recover-short", "export", "evaluate", "passkey") or (
            stage.kind == "search" and stage.settings.relative)
        if needs and not have_factors:
            raise RopesearchError(f"{where}: stage {stage.name} needs factors from an earlier search stage")
        if stage.kind == "search":
            have_factors = True


def load_plan(path: str | Path) -> Plan:
    """A plan by file path, or by the name of a shipped plan (pocket-quickstart, ...) from any directory."""
    data, where = resources.load_yaml(path, resources.PLANS)
    return plan_from_dict(data, where=f"plan {where}")
