"""Genomes <-> factor sets for one search: which genes exist, their bounds, repair and decoding.

A genome is [λ of each searched dimension, (index into start_tokens), (attention factor)].
Searched dimensions are all of them, or with a critical dimension c (LongRoPE2) only those
from c/2 on; the ones below then follow a geometric (NTK-shaped) curve from 1 at the fastest
dimension up to the first searched factor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ropesearch.rope import RopeBase, RopeFactors, critical_dimension, make_factors
from ropesearch.rope.methods import longrope_mscale
from ropesearch.search.space import SearchSpace

ATTENTION_STEP = 0.001


@dataclass(frozen=True)
class Encoding:
    space: SearchSpace
    base: RopeBase
    target_context: int

    @property
    def scale(self) -> float:
        return self.target_context / self.base.original_context

    @property
    def first_free(self) -> int:
        """Index of the first searched factor (0 without a critical dimension)."""
        cd = self.space.factors.critical_dimension
        if cd is None:
            return 0
        dims = critical_dimension(self.base) if cd == "theory" else int(cd)
        return min(max(dims // 2, 0), self.base.n_factors - 1)

    @property
    def n_factor_genes(self) -> int:
        return self.base.n_factors - self.first_free

    @property
    def n_var(self) -> int:
        return self.n_factor_genes + (self.space.start_tokens is not None) + (self.space.attention_factor is not None)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        genes = self.space.factors
        low = [genes.low] * self.n_factor_genes
        high = [genes.high * self.scale] * self.n_factor_genes
        if self.space.start_tokens is not None:
            low.append(0.0)
            high.append(float(len(self.space.start_tokens) - 1))
        if self.space.attention_factor is not None:
            low.append(self.space.attention_factor[0])
            high.append(self.space.attention_factor[1])
        return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)

    # ---- repair -------------------------------------------------------------------
    def repair(self, genomes: np.ndarray) -> np.ndarray:
        """Project genomes onto the space: bounds, grid, non-decreasing factors (vectorised, no retries)."""
        genomes = np.array(genomes, dtype=np.float64, copy=True, ndmin=2)
        low, high = self.bounds
        n = self.n_factor_genes
        genes = self.space.factors
        factors = np.clip(genomes[:, :n], low[:n], high[:n])
        factors = np.round(np.round(factors / genes.step) * genes.step, 10)
        factors = np.clip(factors, low[:n], high[:n])
        if genes.monotone:
            factors = np.maximum.accumulate(factors, axis=1)
        genomes[:, :n] = factors
        column = n
        if self.space.start_tokens is not None:
            genomes[:, column] = np.clip(np.round(genomes[:, column]), low[column], high[column])
            column += 1
        if self.space.attention_factor is not None:
            values = np.round(np.round(genomes[:, column] / ATTENTION_STEP) * ATTENTION_STEP, 10)
            genomes[:, column] = np.clip(values, low[column], high[column])
        return genomes

    # ---- genome -> factors ------------------------------------------------------------
    def long_factor(self, genome: np.ndarray) -> np.ndarray:
        searched = np.asarray(genome[: self.n_factor_genes], dtype=np.float64)
        c = self.first_free
        if c:
            # geometric from 1 (i = 0) to the first searched factor (i = c), like NTK's curve
            below = searched[0] ** (np.arange(c) / c)
            searched = np.concatenate([below, searched])
        return searched

    def decode(self, genome: np.ndarray) -> RopeFactors:
        genome = np.asarray(genome, dtype=np.float64)
        column = self.n_factor_genes
        start_tokens = 0
        if self.space.start_tokens is not None:
            start_tokens = int(self.space.start_tokens[int(round(genome[column]))])
            column += 1
        if self.space.attention_factor is not None:
            attention = float(genome[column])
        else:
            attention = longrope_mscale(self.scale, self.base.original_context)
        long_factor = tuple(float(x) for x in self.long_factor(genome))
        return RopeFactors(
            base=self.base,
            long_factor=long_factor,
            short_factor=long_factor,
            target_context=self.target_context,
            attention_factor=attention,
            start_tokens=start_tokens,
            method="longrope",
            params={"space": self.space.name, "scale": self.scale},
        )

    def key(self, genome: np.ndarray) -> str:
        """Cache key: the repaired genome rounded well below the grid."""
        rounded = np.round(np.asarray(genome, dtype=np.float64), 6) + 0.0  # +0.0 folds -0.0
        return hashlib.sha1(rounded.tobytes()).hexdigest()

    # ---- factors -> genome --------------------------------------------------------------
    def encode(self, factors: np.ndarray, start_tokens: int = 0, attention: float | None = None) -> np.ndarray:
        """The genome nearest to a full factor vector (its searched part, repaired)."""
        genome = list(np.asarray(factors, dtype=np.float64)[self.first_free :])
        if self.space.start_tokens is not None:
            options = np.asarray(self.space.start_tokens)
            genome.append(float(np.argmin(np.abs(options - start_tokens))))
        if self.space.attention_factor is not None:
            genome.append(attention if attention is not None else longrope_mscale(self.scale, self.base.original_context))
        return self.repair(np.asarray(genome))[0]

    def seed_genomes(self) -> dict[str, np.ndarray]:
        """The space's seed methods (PI, NTK, YaRN...) at the target scale, projected onto the space."""
        seeds = {}
        for method in self.space.seeds:
            factors = make_factors(method, self.base, self.scale if method != "none" else 1.0)
            seeds[method] = self.encode(factors.long_factor, attention=factors.attention_factor)
        return seeds
