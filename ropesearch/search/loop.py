"""The search loop: pymoo's ask/tell with our batched evaluator, a score cache, screening,
a checkpoint after every generation, resume, and early stopping.

One generation: ask pymoo for offspring (the initial population first), take cached scores,
screen the new ones cheaply if the space says so, score the promising ones in full in one
batched evaluator call, tell pymoo, then append history and write the checkpoint and the best
factor file. A resumed run continues from the last checkpoint with the random state it had,
so it reaches the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination

from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeFactors, methods
from ropesearch.search.checkpoint import algorithm_state, restore_algorithm
from ropesearch.search.encoding import Encoding
from ropesearch.search.objectives import Objective
from ropesearch.search.operators import FactorCrossover, FactorMutation, GridRepair, SeededSampling, SplitMating
from ropesearch.search.rundir import RunDir
from ropesearch.search.screening import cache_pairs, rank_correlation, stop_screening


def _failure(values, names) -> str | None:
    """Why a score is unusable (NaN or infinite), or None."""
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    bad = [f"{name} {value}" for name, value in zip(names, values) if not math.isfinite(value)]
    return f"non-finite score: {', '.join(bad)}" if bad else None


class _KeepTopK:
    """After scoring the (larger) initial population, keep only top_k as parents, as LongRoPE does."""

    def _initialize_advance(self, infills=None, **kwargs):
        self.pop = self.survival.do(self.problem, infills, n_survive=self.pop_size, algorithm=self,
                                    random_state=self.random_state)


class _GA(_KeepTopK, GA):
    pass


class _NSGA2(_KeepTopK, NSGA2):
    pass


def build_algorithm(encoding: Encoding, n_obj: int, seed: int):
    space = encoding.space
    repair = GridRepair(encoding)
    mutation = FactorMutation(encoding)
    crossover = FactorCrossover(encoding)
    origins: dict[str, str] = {}  # genome key -> seed name / mutation / crossover, for history rows
    mating = SplitMating(encoding, mutation, crossover, origins=origins, repair=repair,
                         eliminate_duplicates=DefaultDuplicateElimination(), n_max_iterations=20)
    cls = _GA if space.algorithm == "ga" else _NSGA2
    algorithm = cls(pop_size=space.budget.top_k, sampling=SeededSampling(encoding, mutation, origins), mating=mating,
                    n_offsprings=space.offspring, repair=repair, eliminate_duplicates=DefaultDuplicateElimination())
    low, high = encoding.bounds
    algorithm.setup(Problem(n_var=encoding.n_var, n_obj=n_obj, xl=low, xu=high), termination=NoTermination(),
                    seed=seed)
    algorithm.origins = origins
    return algorithm


@dataclass
class SearchState:
    """Everything a checkpoint holds."""

    algorithm: object
    generation: int = 0  # completed generations (the initial population is generation 0)
    full_evals: int = 0
    screen_evals: int = 0
    elapsed: float = 0.0  # wall seconds over all sessions of this run
    evaluator_seconds: float = 0.0  # seconds in the evaluator (GPU or CPU), full and screening
    cache: dict = field(default_factory=dict)  # genome key -> objective values (full scores)
    screen_cache: dict = field(default_factory=dict)
    progress: list = field(default_factory=list)  # one entry per generation
    best: float = math.inf
    stale: int = 0  # generations without improvement
    short_reference: float | None = None  # what the objective measured at the start (ppl+short: the unscaled model's original window)
    stop_reason: str | None = None
    history_lines: int = 0
    baselines: dict = field(default_factory=dict)  # PI / NTK / YaRN at the target: what the search has to beat
    screen_off: str | None = None  # why screening stopped (it did not rank, see search/screening.py)


@dataclass
class SearchResult:
    factors: RopeFactors
    values: list[float]
    state: SearchState


class Search:
    """A resumable search for one target length."""

    def __init__(self, encoding: Encoding, objective: Objective, run_dir: RunDir, seed: int = 0,
                 max_evals: int | None = None, time_minutes: float | None = None, log=print,
                 provenance: dict | None = None, status=None):
        self.encoding = encoding
        self.objective = objective
        self.run_dir = run_dir
        self.seed = seed
        budget = encoding.space.budget
        self.max_evals = max_evals if max_evals is not None else budget.max_evals
        self.time_minutes = time_minutes if time_minutes is not None else budget.time_minutes
        self.log = log
        self.provenance = provenance or {}
        self.status = status  # () -> str for the progress line (a worker pool: workers alive, candidates/s)

    # ---- one generation -----------------------------------------------------------------
    def _record(self, state, genome, factors, fidelity, values, names, seconds) -> dict:
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        failed = _failure(values, names)
        origins = getattr(state.algorithm, "origins", {})
        return {
            "generation": state.generation,
            "fidelity": fidelity,
            "origin": origins.get(self.encoding.key(genome), "survivor"),
            "genome": [round(float(g), 6) for g in genome],
            "long_factor": [round(f, 6) for f in factors.long_factor],
            "start_tokens": factors.start_tokens,
            "attention_factor": factors.attention_factor,
            "metrics": dict(zip(names, (None if failed else float(v) for v in values))),
            "seconds": round(seconds, 4),
        } | ({"failed": failed} if failed else {})

    def _generation(self, state: SearchState) -> None:
        encoding, objective = self.encoding, self.objective
        fidelity = encoding.space.fidelity
        pop = state.algorithm.ask()
        X = pop.get("X")
        keys = [encoding.key(x) for x in X]
        F = np.full((len(X), objective.n_obj), np.inf)
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key in state.cache:
                F[i] = state.cache[key]
            elif key not in seen:
                seen.add(key)
                todo.append(i)
        records = []
        screening = (fidelity.screen_samples and state.screen_off is None
                     and (state.generation > 0 or fidelity.initial))
        if screening and len(todo) > 1:
            fresh = [i for i in todo if keys[i] not in state.screen_cache]
            if fresh:
                candidates = [encoding.decode(X[i]) for i in fresh]
                values, seconds, notes = objective.screen(candidates)
                for i, factors, value, second, note in zip(fresh, candidates, values, seconds, notes):
                    # a non-finite score is a failed candidate: ranked last, never promoted or best
                    state.screen_cache[keys[i]] = float(value) if math.isfinite(value) else math.inf
                    records.append(self._record(state, X[i], factors, "screen", value, ["screen_ppl"], second) | note)
                    state.evaluator_seconds += second
                state.screen_evals += len(fresh)
            ranked = sorted(todo, key=lambda i: state.screen_cache[keys[i]])
            promoted = max(1, math.ceil(fidelity.promote * len(ranked)))
            todo = sorted(ranked[: min(promoted, fidelity.promote_max or promoted)])
        if self.max_evals is not None:
            todo = todo[: max(0, self.max_evals - state.full_evals)]
        if todo:
            candidates = [encoding.decode(X[i]) for i in todo]
            values, seconds, notes = objective.score(candidates)
            for i, factors, value, second, note in zip(todo, candidates, values, seconds, notes):
                value = np.where(np.isfinite(value), value, np.inf) if _failure(value, objective.names) else value
                F[i] = value
                state.cache[keys[i]] = value.tolist()
                records.append(self._record(state, X[i], factors, "full", value, objective.names, second) | note)
                state.evaluator_seconds += second
            state.full_evals += len(todo)
        pop.set("F", F)
        state.algorithm.tell(infills=pop)
        self.run_dir.append_history(records)
        state.history_lines += len(records)

    # ---- the best so far --------------------------------------------------------------
    def best(self, state: SearchState) -> tuple[np.ndarray, np.ndarray]:
        """Genome and objective values of the best survivor (for two objectives: the chosen front member)."""
        pop = state.algorithm.pop
        X, F = pop.get("X"), pop.get("F")
        index = self.objective.best_index(F)
        return X[index], F[index]

    def _after_generation(self, state: SearchState, started: float) -> None:
        genome, values = self.best(state)
        previous = state.best
        state.best = float(values[0])
        improved = state.best < previous * (1 - self.encoding.space.budget.min_improvement)
        state.stale = 0 if improved or state.generation == 0 else state.stale + 1
        state.generation += 1
        state.elapsed += time.perf_counter() - started
        state.progress.append({"generation": state.generation - 1, "full_evals": state.full_evals,
                               "screen_evals": state.screen_evals, "elapsed": round(state.elapsed, 3),
                               "evaluator_seconds": round(state.evaluator_seconds, 3),
                               "best": dict(zip(self.objective.names, map(float, values)))}
                              | self._judge_screen(state))
        factors = self.encoding.decode(genome)
        if not np.all(np.isfinite(values)):  # every candidate so far failed: no best to write
            self._save_checkpoint(state)
            self.log(f"gen {state.generation - 1:3d}: every candidate so far failed (non-finite scores)")
            return
        self.run_dir.save_best(
            factors,
            provenance=self.provenance | {
                "objective": self.objective.kind,
                "scores": dict(zip(self.objective.names, map(float, values))),
                "generation": state.generation - 1,
                "full_evaluations": state.full_evals,
                **({"baselines": state.baselines} if state.baselines else {}),
            },
            monotone=self.encoding.space.factors.monotone,
        )
        self.run_dir.save_progress(state.progress)
        self._save_checkpoint(state)
        budget = self.encoding.space.budget
        self.log(f"gen {state.generation - 1:3d}/{budget.generations}  evals {state.full_evals:5d}"
                 + (f" (+{state.screen_evals} screened)" if state.screen_evals else "")
                 + f"  best {self.objective.names[0]} {state.best:.4f}{self._versus_yarn(state)}"
                 + self._screen_note(state.progress[-1])
                 + f"  {state.elapsed / 60:.1f} min"
                 + (f"  {self.status()}" if self.status else ""))

    def _judge_screen(self, state: SearchState) -> dict:
        """The screen's rank correlation so far (for progress.json), and screening stopped when it does not rank."""
        if not self.encoding.space.fidelity.screen_samples:
            return {}
        rank = {k: v for k, v in rank_correlation(cache_pairs(state.screen_cache, state.cache)).items()
                if k != "kendall"}
        if state.screen_off is None and (reason := stop_screening(rank)):
            state.screen_off = reason
            self.log(f"screening stops after generation {state.generation - 1}: {reason}; every new candidate "
                     "is scored in full from now on")
        return {"screen": rank | {"on": state.screen_off is None}}

    @staticmethod
    def _screen_note(entry: dict) -> str:
        rank = entry.get("screen")
        if not rank or rank["spearman"] is None:
            return ""
        return f"  screen rho {rank['spearman']:+.2f}/{rank['pairs']}" + ("" if rank["on"] else " (off)")

    @staticmethod
    def _versus_yarn(state: SearchState) -> str:
        yarn = state.baselines.get("yarn")
        return f" ({state.best / yarn:.3f}x YaRN)" if yarn and math.isfinite(yarn) else ""  # inf: YaRN failed on the workers

    def _score_baselines(self, state: SearchState) -> None:
        """PI, NTK and YaRN at the target, scored and printed before generation 0 (what to beat)."""
        encoding = self.encoding
        if encoding.regime != "long" or encoding.reference is not None:
            return
        sets = {name: methods.make_factors(name, encoding.base, encoding.scale) for name in ("pi", "ntk", "yarn")}
        values, seconds, _ = self.objective.score(list(sets.values()))
        state.evaluator_seconds += sum(seconds)
        state.baselines = {name: float(value[0]) for name, value in zip(sets, values)}
        self.log(f"baselines at {encoding.target_context} tokens ({self.objective.names[0]}): "
                 + ", ".join(f"{methods.METHODS[name].spoken} {value:.4f}"
                             for name, value in state.baselines.items()) + "; generation 0 starts")

    def _stop_reason(self, state: SearchState) -> str | None:
        budget = self.encoding.space.budget
        if state.generation > budget.generations:
            return f"{budget.generations} generations done"
        if self.max_evals is not None and state.full_evals >= self.max_evals:
            return f"evaluation budget ({self.max_evals}) spent"
        if self.time_minutes is not None and state.elapsed >= self.time_minutes * 60:
            return f"time budget ({self.time_minutes} min) spent"
        if budget.patience is not None and state.stale >= budget.patience:
            return f"no improvement for {budget.patience} generations"
        return None

    def _save_checkpoint(self, state: SearchState) -> None:
        """The state as data: JSON fields plus the population's arrays (never a pickle)."""
        meta, arrays = algorithm_state(state.algorithm)
        data = {k: v for k, v in vars(state).items() if k != "algorithm"}
        self.run_dir.save_checkpoint(data | {"algorithm": meta}, arrays)

    def _restore(self, saved: dict) -> SearchState:
        algorithm = build_algorithm(self.encoding, self.objective.n_obj, self.seed)
        restore_algorithm(algorithm, saved["algorithm"]["meta"], saved["algorithm"]["arrays"],
                          source=f"cannot resume {self.run_dir.path}: its checkpoint {self.run_dir.checkpoint_file}")
        if "gpu_seconds" in saved:  # runs written before the field was named for CPU runs too
            saved = {k: v for k, v in saved.items() if k != "gpu_seconds"} | {"evaluator_seconds": saved["gpu_seconds"]}
        names = {f.name for f in fields(SearchState)} - {"algorithm"}
        return SearchState(algorithm=algorithm, **{k: v for k, v in saved.items() if k in names})

    # ---- public -----------------------------------------------------------------------------
    def run(self, resume: bool = False, config: dict | None = None, stop_after: int | None = None) -> SearchResult:
        """Search until a budget ends. `stop_after` ends this session after that many generations."""
        saved = self.run_dir.start(config or {}, resume)
        if saved is not None:
            state = self._restore(saved)
            self.objective.reference = state.short_reference
            self.log(f"resuming {self.run_dir.path} after generation {state.generation - 1} "
                     f"({state.full_evals} evaluations)")
        else:
            state = SearchState(algorithm=build_algorithm(self.encoding, self.objective.n_obj, self.seed))
            started = time.perf_counter()
            state.evaluator_seconds += self.objective.start(self.encoding.base)
            state.short_reference = self.objective.reference
            self._score_baselines(state)
            # what generation 0 is measured against is search time too: the wall time holds every
            # evaluator second (else the evaluator's minutes exceed the wall's)
            state.elapsed += time.perf_counter() - started
        sessions = 0
        while (reason := self._stop_reason(state)) is None:
            if stop_after is not None and sessions >= stop_after:
                break
            started = time.perf_counter()
            self._generation(state)
            self._after_generation(state, started)
            sessions += 1
        if reason is not None:
            state.stop_reason = reason
            self._save_checkpoint(state)
            self.log(f"stopped: {reason}")
        genome, values = self.best(state)
        if not np.all(np.isfinite(values)):
            raise RopesearchError(f"every candidate of {self.run_dir.path} failed (non-finite perplexity, reasons "
                                  "in history.jsonl): no factors found; check the model and the data")
        return SearchResult(self.encoding.decode(genome), [float(v) for v in values], state)
