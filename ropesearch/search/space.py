"""Search spaces: YAML files validated into typed dataclasses (see search_spaces/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ropesearch import resources
from ropesearch.errors import RopesearchError
from ropesearch.rope.methods import METHODS
from ropesearch.search.objectives import OBJECTIVES
from ropesearch.validate import check_fields

@dataclass(frozen=True)
class FactorGenes:
    low: float = 1.0  # smallest factor (absolute)
    high: float = 1.25  # largest factor, as a multiple of the scale s
    step: float = 0.01  # grid of the factors
    monotone: bool = True  # factors never decrease from fast to slow dimensions
    # LongRoPE2: only dims from the critical dimension on are searched; the ones below follow an
    # NTK-shaped (geometric) curve from 1 up to the first searched factor. null: search all;
    # "theory": the theoretical critical dimension; an int: that many rotary dims (even).
    critical_dimension: int | str | None = None
    # a share f in (0, 1]: the factors of dimension pairs that never completed a turn in the window
    # the model was trained at (with the reference factors of a progressive stage) are at least f
    # times the scale the genome covers, so their angles stay inside the trained ones up to f times
    # the target (1: LongRoPE2's lambda >= s past the critical dimension; rope.unturned,
    # rope.in_range_length). null: no floor
    floor_unturned: float | None = None


@dataclass(frozen=True)
class Operators:
    mutation: str = "segment"  # "segment": log-space shifts of whole runs; "neighbour": LongRoPE's resampling
    mutation_prob: float = 0.3  # per-gene probability
    mutation_sigma: float = 0.08  # log-space step of the segment mutation
    crossover: str = "blend"  # "uniform" (LongRoPE), "one-point", or "blend" (log-space interpolation)


@dataclass(frozen=True)
class Budget:
    population: int = 64  # initial population
    generations: int = 40
    mutations: int = 16  # mutants per generation
    crossovers: int = 16  # crossover children per generation
    top_k: int = 32  # parents kept each generation (elitist, mu + lambda)
    max_evals: int | None = None  # full evaluations, all generations together
    time_minutes: float | None = None
    patience: int | None = None  # stop after this many generations without improvement
    min_improvement: float = 0.0  # relative improvement of the best that counts


@dataclass(frozen=True)
class Fidelity:
    """Multi-fidelity: screen offspring cheaply, score only the promising ones in full."""

    screen_samples: int | None = None  # windows used for screening (None: no screening)
    screen_length_fraction: float = 1.0  # screening windows are this fraction of the target length
    promote: float = 0.5  # fraction of screened offspring promoted to full scoring
    promote_max: int | None = None  # and at most this many (full scores that cost minutes each, e.g. at 1M)
    # screen the initial population too (a large, cheaply screened start: its best `promote`
    # fraction is scored in full); false scores every initial member in full
    initial: bool = False


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str = ""
    factors: FactorGenes = field(default_factory=FactorGenes)
    start_tokens: tuple[int, ...] | None = None  # n̂ candidates; None keeps n̂ = 0
    attention_factor: tuple[float, float] | None = None  # searched range; None: LongRoPE's default
    operators: Operators = field(default_factory=Operators)
    budget: Budget = field(default_factory=Budget)
    fidelity: Fidelity = field(default_factory=Fidelity)
    seeds: tuple[str, ...] = ("pi", "ntk", "yarn")
    samples: int = 2  # search windows at the target length
    algorithm: str = "ga"  # "ga" (one objective) or "nsga2" (two)
    objective: str = "ppl"  # default objective: ppl, needle or ppl+short (the CLI's --objective overrides)
    workers: int | None = None  # score on this many Ray workers (the CLI's --workers overrides); null: in-process

    @property
    def offspring(self) -> int:
        return self.budget.mutations + self.budget.crossovers


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RopesearchError(f"{where} must be a mapping")
    return cls(**check_fields(cls, data, where))


def _check(space: SearchSpace, where: str) -> None:
    f, b, o, fid = space.factors, space.budget, space.operators, space.fidelity
    problems = []
    if not 0 < f.low <= f.high:
        problems.append(f"factors.low ({f.low}) must be > 0 and <= factors.high ({f.high})")
    if f.step <= 0:
        problems.append("factors.step must be > 0")
    cd = f.critical_dimension
    if cd is not None and cd != "theory" and (isinstance(cd, bool) or not isinstance(cd, int) or cd < 0 or cd % 2):
        problems.append(f"factors.critical_dimension must be null, 'theory' or an even number, got {cd!r}")
    fu = f.floor_unturned
    if fu is not None and (isinstance(fu, bool) or not isinstance(fu, (int, float)) or not 0 < fu <= 1):
        problems.append(f"factors.floor_unturned must be null or a share in (0, 1] of the scale, got {fu!r}")
    if o.mutation not in ("segment", "neighbour"):
        problems.append(f"operators.mutation must be segment or neighbour, got {o.mutation!r}")
    if o.crossover not in ("uniform", "one-point", "blend"):
        problems.append(f"operators.crossover must be uniform, one-point or blend, got {o.crossover!r}")
    if not 0 <= o.mutation_prob <= 1:
        problems.append("operators.mutation_prob must lie in [0, 1]")
    if b.top_k < 2 or b.population < b.top_k:
        problems.append(f"budget needs 2 <= top_k ({b.top_k}) <= population ({b.population})")
    if b.mutations < 0 or b.crossovers < 0 or b.mutations + b.crossovers < 1:
        problems.append("budget.mutations + budget.crossovers must be >= 1")
    if b.generations < 0:
        problems.append("budget.generations must be >= 0")
    if b.max_evals is not None and b.max_evals < 1:
        problems.append(f"budget.max_evals must be >= 1 (or null), got {b.max_evals}")
    if b.time_minutes is not None and b.time_minutes <= 0:
        problems.append(f"budget.time_minutes must be > 0 (or null), got {b.time_minutes}")
    if b.patience is not None and b.patience < 1:
        problems.append(f"budget.patience must be >= 1 (or null), got {b.patience}")
    if b.min_improvement < 0:
        problems.append("budget.min_improvement must be >= 0")
    if o.mutation_sigma <= 0:
        problems.append("operators.mutation_sigma must be > 0")
    if fid.screen_samples is not None and (fid.screen_samples < 1 or not 0 < fid.promote <= 1
                                           or not 0 < fid.screen_length_fraction <= 1):
        problems.append("fidelity needs screen_samples >= 1, promote in (0, 1], screen_length_fraction in (0, 1]")
    pm = fid.promote_max
    if pm is not None and (isinstance(pm, bool) or not isinstance(pm, int) or pm < 1):
        problems.append(f"fidelity.promote_max must be null or a whole number >= 1, got {pm!r}")
    if space.algorithm not in ("ga", "nsga2"):
        problems.append(f"algorithm must be ga or nsga2, got {space.algorithm!r}")
    if space.objective not in OBJECTIVES:
        problems.append(f"objective must be one of {', '.join(OBJECTIVES)}, got {space.objective!r}")
    if space.samples < 1:
        problems.append("samples must be >= 1")
    if space.workers is not None and (isinstance(space.workers, bool) or not isinstance(space.workers, int)
                                      or space.workers < 1):
        problems.append(f"workers must be null or a whole number >= 1, got {space.workers!r}")
    if space.start_tokens is not None and (not space.start_tokens or any(n < 0 for n in space.start_tokens)):
        problems.append("start_tokens must be a non-empty list of numbers >= 0")
    if space.attention_factor is not None and not 0 < space.attention_factor[0] <= space.attention_factor[1]:
        problems.append("attention_factor must be [low, high] with 0 < low <= high")
    unknown_seeds = set(space.seeds) - {name for name, method in METHODS.items() if method.seeds}
    if unknown_seeds:
        problems.append(f"unknown seed method {sorted(unknown_seeds)[0]!r}")
    if problems:
        raise RopesearchError(f"{where}: {problems[0]}")


def space_from_dict(data: Any, where: str = "search space") -> SearchSpace:
    if not isinstance(data, dict):
        raise RopesearchError(f"{where} must be a YAML mapping")
    data = dict(data)
    allowed = {f.name for f in fields(SearchSpace)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RopesearchError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    if "name" not in data:
        raise RopesearchError(f"{where}: missing key 'name'")
    nested = {"factors": FactorGenes, "operators": Operators, "budget": Budget, "fidelity": Fidelity}
    if data.get("attention_factor") is not None and isinstance(data["attention_factor"], list):
        data["attention_factor"] = tuple(data["attention_factor"])
    data = check_fields(SearchSpace, data, f"{where}:", skip=tuple(nested) + ("attention_factor",))
    for key, cls in nested.items():
        data[key] = _build(cls, data.get(key), f"{where}: {key}")
    for key in ("start_tokens", "seeds"):
        if data.get(key) is not None:
            if not isinstance(data[key], (list, tuple)):
                raise RopesearchError(f"{where}: {key} must be a list")
            data[key] = tuple(data[key])
    if data.get("attention_factor") is not None:
        pair = data["attention_factor"]
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)):
            raise RopesearchError(f"{where}: attention_factor must be [low, high]")
        data["attention_factor"] = (float(pair[0]), float(pair[1]))
    space = SearchSpace(**data)
    _check(space, where)
    return space


def load_space(spec: str | Path) -> SearchSpace:
    """A space by file path or by the name of a shipped space (fast, longrope, longrope2)."""
    data, where = resources.load_yaml(spec, resources.SPACES)
    return space_from_dict(data, where=f"search space {where}")


def space_to_dict(space: SearchSpace) -> dict:
    from dataclasses import asdict

    document = asdict(space)
    for key in ("start_tokens", "seeds", "attention_factor"):
        if document[key] is not None:
            document[key] = list(document[key])
    if document["factors"]["floor_unturned"] is None:  # as spaces were before it existed: their runs resume
        del document["factors"]["floor_unturned"]
    return document
