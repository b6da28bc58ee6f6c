"""pymoo operators that keep factors on the grid and non-decreasing: sampling, mutation, crossover, repair.

Every operator works on whole genome arrays and ends in `Encoding.repair`, a projection, so
no operator ever retries. Random numbers come from pymoo's `random_state`, which makes a
search reproducible from its seed and resumable from a checkpoint.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.infill import InfillCriterion
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from ropesearch.search.encoding import Encoding

ATTENTION_SIGMA = 0.05  # attention-factor mutation step, as a fraction of its searched range


class GridRepair(Repair):
    """Bounds, grid and monotonicity, as one projection."""

    def __init__(self, encoding: Encoding):
        super().__init__()
        self.encoding = encoding

    def _do(self, problem, X, **kwargs):
        return self.encoding.repair(X)


class FactorMutation(Mutation):
    """Mutate the factor genes (and the n̂ / attention genes), then repair.

    "segment" (our default): pick a random run of consecutive dimensions and shift all of it
    by one log-space step, so a flat run of equal factors moves as a block (repair alone
    would only ever move its edges); plus per-gene log-space noise with probability p.
    "neighbour" (LongRoPE's): with probability p, resample a gene uniformly on the grid
    between its two neighbours, which keeps the order by construction.
    """

    def __init__(self, encoding: Encoding):
        super().__init__(prob=1.0)
        self.encoding = encoding

    def _do(self, problem, X, random_state=None, **kwargs):
        operators = self.encoding.space.operators
        rng = random_state
        X = np.array(X, dtype=np.float64, copy=True)
        n = self.encoding.n_factor_genes
        low, high = self.encoding.bounds
        for row in X:
            factors = row[:n]
            if operators.mutation == "segment":
                start = rng.integers(0, n)
                end = rng.integers(start + 1, n + 1)
                logs = np.log(factors)
                logs[start:end] += rng.normal(0.0, operators.mutation_sigma)
                noisy = rng.random(n) < operators.mutation_prob
                logs[noisy] += rng.normal(0.0, operators.mutation_sigma / 2, noisy.sum())
                factors[:] = np.exp(logs)
            else:
                for i in np.flatnonzero(rng.random(n) < operators.mutation_prob):
                    left = factors[i - 1] if i > 0 else low[i]
                    right = factors[i + 1] if i + 1 < n else high[i]
                    factors[i] = rng.uniform(min(left, right), max(left, right))
            # the extra genes mutate with the same per-gene probability: n̂ resampled, the attention
            # factor nudged (a uniform resample of it is nearly always far worse: its optimum is narrow)
            for column in range(n, len(row)):
                if rng.random() < max(operators.mutation_prob, 0.1):
                    if column == self.encoding.attention_column:
                        row[column] += rng.normal(0.0, ATTENTION_SIGMA * (high[column] - low[column]))
                    else:
                        row[column] = rng.uniform(low[column], high[column])
        return self.encoding.repair(X)


class FactorCrossover(Crossover):
    """Two parents, one child: uniform (LongRoPE), one-point, or a log-space blend; then repair."""

    def __init__(self, encoding: Encoding):
        super().__init__(n_parents=2, n_offsprings=1)
        self.encoding = encoding

    def _do(self, problem, X, random_state=None, **kwargs):
        rng = random_state
        first, second = X[0], X[1]  # [n_matings, n_var] each
        kind = self.encoding.space.operators.crossover
        children = np.empty_like(first)
        for k in range(first.shape[0]):
            a, b = first[k], second[k]
            if kind == "uniform":
                children[k] = np.where(rng.random(a.shape) < 0.5, a, b)
            elif kind == "one-point":
                cut = rng.integers(1, len(a)) if len(a) > 1 else 0
                children[k] = np.concatenate([a[:cut], b[cut:]])
            else:
                weight = rng.uniform(0.0, 1.0)
                children[k] = np.exp(weight * np.log(a) + (1 - weight) * np.log(b))
                n = self.encoding.n_factor_genes
                children[k, n:] = np.where(rng.random(len(a) - n) < 0.5, a[n:], b[n:])
        return self.encoding.repair(children)[None]


class SeededSampling(Sampling):
    """The initial population: the seed methods' true vectors, then mutants of them up to its size."""

    def __init__(self, encoding: Encoding, mutation: FactorMutation, origins: dict | None = None):
        super().__init__()
        self.encoding = encoding
        self.mutation = mutation
        self.origins = {} if origins is None else origins  # genome key -> where it came from

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        named = self.encoding.seed_genomes()
        names, seeds = list(named), list(named.values())
        size = self.encoding.space.budget.population
        population = [seeds[i] for i in range(min(len(seeds), size))]
        self.origins.clear()
        for name, genome in zip(names, population):
            self.origins.setdefault(self.encoding.key(genome), f"seed:{name}")
        seen = {self.encoding.key(g) for g in population}
        attempts = 0
        while len(population) < size and attempts < 50 * size:  # bounded: tiny spaces may hold few genomes
            attempts += 1
            index = rng_index(random_state, len(seeds))
            child = self.mutation._do(problem, seeds[index][None], random_state=random_state)[0]
            if self.encoding.key(child) not in seen:
                seen.add(self.encoding.key(child))
                population.append(child)
                self.origins[self.encoding.key(child)] = f"mutant of seed:{names[index]}"
        return np.asarray(population)


def rng_index(rng, n: int) -> int:
    return int(rng.integers(0, n))


class SplitMating(InfillCriterion):
    """LongRoPE's offspring: `mutations` mutants and `crossovers` crossover children of random parents."""

    def __init__(self, encoding: Encoding, mutation: FactorMutation, crossover: FactorCrossover,
                 origins: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.encoding = encoding
        self.mutation = mutation
        self.crossover = crossover
        self.origins = {} if origins is None else origins  # genome key -> "mutation" / "crossover"

    def _do(self, problem, pop, n_offsprings, random_state=None, **kwargs):
        budget = self.encoding.space.budget
        total = budget.mutations + budget.crossovers
        n_mutants = int(round(n_offsprings * budget.mutations / total))
        X = pop.get("X")
        children = []
        if n_mutants:
            parents = X[random_state.integers(0, len(X), n_mutants)]
            children.append(self.mutation._do(problem, parents, random_state=random_state))
        n_cross = n_offsprings - n_mutants
        if n_cross and len(X) >= 2:
            pairs = np.array([random_state.choice(len(X), 2, replace=False) for _ in range(n_cross)])
            children.append(self.crossover._do(problem, np.stack([X[pairs[:, 0]], X[pairs[:, 1]]]),
                                               random_state=random_state)[0])
        self.origins.clear()
        kinds = ["mutation"] * n_mutants + ["crossover"] * (n_cross if len(X) >= 2 else 0)
        for kind, child in zip(kinds, np.concatenate(children) if children else []):
            self.origins.setdefault(self.encoding.key(child), kind)
        return Population.new(X=np.concatenate(children)) if children else Population.create()
