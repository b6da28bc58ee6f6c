"""Genomes <-> factor sets for one search: which genes exist, their bounds, repair and decoding.

A genome is [λ of each searched dimension, (index into start_tokens), (attention factor)].
Searched dimensions are all of them, or with a critical dimension c (LongRoPE2) only those
from c/2 on; the ones below then follow a geometric (NTK-shaped) curve from 1 at the fastest
dimension up to the first searched factor.

Progressive plans add two variants. With a `reference` (the factors a model was fine-tuned
with), a long-regime genome multiplies them and its bounds follow target / reference target.
In the "short" regime the genome is `short_factor` (used at or below the original window)
and everything else comes from the reference; factors are bounded by `high` itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ropesearch.rope import RopeBase, RopeFactors, critical_dimension, make_factors, unturned
from ropesearch.rope.methods import longrope_mscale
from ropesearch.search.space import SearchSpace

ATTENTION_STEP = 0.001
# geometric NTK/YaRN blends seeded when the attention factor is searched: (NTK's weight, name)
BLENDS = ((0.5, "ntk~yarn"), (0.25, "ntk~yarn@0.25"), (0.75, "ntk~yarn@0.75"))


def geometric_ramp(top: float, first: int, count: int) -> np.ndarray:
    """`count` factors growing geometrically (NTK-shaped) from 1 at index 0 to `top` at index
    `first`, and `top` from there on."""
    return top ** np.minimum(np.arange(count) / first, 1.0)


@dataclass(frozen=True)
class Encoding:
    space: SearchSpace
    base: RopeBase
    target_context: int
    reference: RopeFactors | None = None
    regime: str = "long"  # "long": search long_factor; "short": search short_factor of the reference
    short_unscaled: bool = False  # long regime: short_factor all 1 (the original RoPE at or below the window)

    def __post_init__(self):
        if self.regime not in ("long", "short"):
            raise ValueError(f"regime must be long or short, got {self.regime!r}")
        if self.regime == "short" and self.reference is None:
            raise ValueError("a short-factor search needs the reference factors it completes")

    @property
    def scale(self) -> float:
        """Extension ratio of the result: target / original window."""
        return self.target_context / self.base.original_context

    @property
    def search_scale(self) -> float:
        """The ratio the genome itself covers (bounds and seeds use it)."""
        if self.regime == "short":
            return 1.0
        if self.reference is not None:
            return self.target_context / self.reference.target_context
        return self.scale

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
    def attention_column(self) -> int | None:
        """Genome column of the attention factor (None when it is not searched)."""
        if self.space.attention_factor is None:
            return None
        return self.n_var - 1

    @property
    def floored(self) -> np.ndarray:
        """Which factor genes `floor_unturned` holds at >= its share of the scale the genome covers (none
        without it, and none in the short regime, whose genome is short_factor)."""
        if self.space.factors.floor_unturned is None or self.regime == "short":
            return np.zeros(self.n_factor_genes, dtype=bool)
        return unturned(self.base, self.reference)[self.first_free :]

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        genes = self.space.factors
        high = [genes.high * self.search_scale] * self.n_factor_genes
        floor = max(genes.low, (genes.floor_unturned or 0.0) * self.search_scale)
        low = list(np.where(self.floored, np.minimum(floor, high), genes.low))
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
    def factor_vector(self, genome: np.ndarray) -> np.ndarray:
        """All d/2 factors the genome stands for (before any reference multiplies them)."""
        searched = np.asarray(genome[: self.n_factor_genes], dtype=np.float64)
        c = self.first_free
        if c:
            searched = np.concatenate([geometric_ramp(searched[0], c, c), searched])
        return searched

    def decode(self, genome: np.ndarray) -> RopeFactors:
        genome = np.asarray(genome, dtype=np.float64)
        reference = self.reference
        column = self.n_factor_genes
        start_tokens = reference.start_tokens if reference is not None and self.regime == "short" else 0
        if self.space.start_tokens is not None:
            start_tokens = int(self.space.start_tokens[int(round(genome[column]))])
            column += 1
        if self.space.attention_factor is not None:
            attention = float(genome[column])
        elif reference is not None and self.regime == "short":
            attention = reference.attention_factor
        else:
            attention = longrope_mscale(self.scale, self.base.original_context)
        own = self.factor_vector(genome)
        if self.regime == "short":
            long_factor, short_factor = reference.long_factor, tuple(float(x) for x in own)
        else:
            if reference is not None:
                own = own * np.asarray(reference.long_factor)
            long_factor = short_factor = tuple(float(x) for x in own)
            if self.short_unscaled:
                short_factor = (1.0,) * len(long_factor)
        return RopeFactors(
            base=self.base,
            long_factor=long_factor,
            short_factor=short_factor,
            target_context=self.target_context,
            attention_factor=attention,
            start_tokens=start_tokens,
            method="longrope",
            params={"space": self.space.name, "scale": self.scale, "regime": self.regime},
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
        """Starting points, projected onto the space.

        Long regime: the space's seed methods (PI, NTK, YaRN...) at the scale the genome covers;
        with a reference they are relative to it (and "reference", the factors as they are, joins).
        Short regime: the original RoPE (all ones) and the reference's current short factors.
        """
        if self.regime == "short":
            return {"none": self.encode(np.ones(self.base.n_factors)),
                    "current": self.encode(np.asarray(self.reference.short_factor))}
        window = self.base.original_context if self.reference is None else self.reference.target_context
        relative_base = RopeBase(self.base.rope_theta, self.base.rotary_dim, window)
        seeds, vectors = {}, {}
        for method in self.space.seeds:
            factors = make_factors(method, relative_base, self.search_scale if method != "none" else 1.0)
            attention = factors.attention_factor if self.reference is None else None
            seeds[method] = self.encode(factors.long_factor, attention=attention)
            vectors[method] = np.asarray(factors.long_factor)
        if self.reference is None and self.space.attention_factor is not None:
            # The attention factor matters as much as the curve (on SmolLM2 at 8x, NTK went from 56
            # to 49 with LongRoPE's instead of none): each curve also starts with LongRoPE's.
            longrope_attention = longrope_mscale(self.scale, self.base.original_context)
            if "ntk" in vectors and "yarn" in vectors:  # found factors often lie between the two
                for weight, name in BLENDS:
                    vectors[name] = vectors["ntk"] ** weight * vectors["yarn"] ** (1 - weight)
                    seeds[name] = self.encode(vectors[name], attention=longrope_attention)
            for method in [m for m in self.space.seeds if m not in ("none", "pi")]:
                seeds[f"{method}+longrope-attention"] = self.encode(vectors[method], attention=longrope_attention)
            # LongRoPE2's shape: geometric up to the critical dimension, flat beyond it (those dims
            # never turned a full circle in training), topped at s and at 3/4 of s
            first = critical_dimension(self.base) // 2
            if 0 < first < self.base.n_factors:
                for share, name in ((1.0, "critical"), (0.75, "critical@0.75s")):
                    top = max(share * self.search_scale, 1.0)
                    seeds[name] = self.encode(geometric_ramp(top, first, self.base.n_factors),
                                              attention=longrope_attention)
        if self.reference is not None:
            seeds["reference"] = self.encode(np.ones(self.base.n_factors))
        return seeds
