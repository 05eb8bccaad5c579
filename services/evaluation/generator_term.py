"""The generator term of an effect's variance: how much the twins' statistic would move had the
knowledge base been another sample, from B refits of the generator on bootstrap knowledge bases
(see `effects` for the whole variance and its assumptions).

Each refit b twins the *same* source patients and gives, per statistic, theta_b and the
patients' pseudo-values psi_bi (`effect_stats`). Their table (n patients x B refits) is a
two-way layout, psi_bi = mu + a_i + g_b + (ag)_bi + noise_bi:

- g_b, the refit's effect on every patient at once, is the generator term: what another
  knowledge base does to the cohort's estimate;
- (ag)_bi, the part that moves with patient *and* knowledge base jointly (which neighbours a
  patient borrows from, which copies a resample holds), and noise_bi, the twins' Monte-Carlo
  noise, vary from patient to patient under one fitted generator, so the patient term of the
  run already counts them.

The between-refit variance of theta_b = mean_i psi_bi holds Var(g) + (Var(ag) + Var(noise)) / n.
Method of moments of the random-effects two-way layout without replication: the interaction
mean square MS_int = sum_bi r_bi^2 / ((n - 1)(B - 1)), r the doubly centred psi, estimates
Var(ag) + Var(noise), so

    v_g = max(0, Var_b(theta_b) - MS_int / n).

Until effects version 9 only the noise was taken out, from the difference of the two halves of
each refit's twins. That counted the joint part twice (veteran's RMST, 4 replicates: ~14 % of
the term; with the RMST horizon, the rest of its 14-25 % over-estimate in the bootstrap null
design), and the halves are not exchangeable when a patient's donors come in a weighted order
and the twins are balanced over all K: their difference carries the near-versus-far
neighbours' gap, a knowledge-base quantity that was subtracted as noise (respiratory, 3
replicates: 0.00108 vs 0.00075 for the per-patient noise / n; over 1,000 the term rose 7.5 %).
Interactions correlated across similar patients stay in v_g (only their uncorrelated part
leaves MS_int), which errs on the side of a wider interval.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation.effect_stats import statistics, twin_tte, twin_values
from services.evaluation.resampling import resample_knowledge_base, subsample_knowledge_base
from services.generation.run import TwinRun


def bootstrap_settings(run: TwinRun, generator: str, settings: dict) -> dict:
    """Settings of the generator refits: the run's, and for the local generator the structure
    its fit chose held (`structure`: per parameter outcome scale, mean model, baseline scale),
    so that a refit re-estimates the model rather than re-choosing it (the `effects` docstring
    says why and what it leaves out). A run saved before `model_details.structure` existed
    re-chooses."""
    from services.generation.local.generator import held_structure

    out = dict(settings)
    if generator == "local" and not out.get("structure"):      # a run's settings say None
        held = held_structure(run.manifest or {})
        if held:
            out["structure"] = held
    return out


def make_generator(generator: str, settings: dict):
    """A fresh generator for one refit (exact in-memory k-NN: no Chroma collection per refit)."""
    from services.generation import GENERATORS, get_generator

    settings = dict(settings)
    cls = GENERATORS.get(generator)
    if cls is not None and "retriever_factory" in inspect.signature(cls).parameters:
        from services.retrieval.retriever import ExactRetriever

        settings.setdefault("retriever_factory", ExactRetriever)
    return get_generator(generator, **settings)


def _at_subsample_size(generator: str, settings: dict, fraction: float) -> dict:
    """A refit on a subsample applies the run's visit rule at the subsample's size: a visit
    needs ``fraction`` x ``min_visit_subjects`` patients (else a visit the run modelled vanishes
    from every refit of a small knowledge base and the statistic has no generator term). The
    visits a refit models can still differ from the run's (its count at a visit is random):
    the visit set is not held, as the structure is."""
    from services.generation import GENERATORS

    cls = GENERATORS.get(generator)
    param = inspect.signature(cls).parameters.get("min_visit_subjects") if cls is not None else None
    if param is None:
        return settings
    base = int(settings.get("min_visit_subjects", param.default))
    return {**settings, "min_visit_subjects": max(2, math.ceil(base * fraction))}


class GeneratorTerm(NamedTuple):
    """Generator variance = between-refit variance - interaction mean square / n (floored at 0).

    ``df_term``, its Satterthwaite denominator Var(estimate) / 2, is between^2 / (B - 1) +
    (MS_int / n)^2 / ((n - 1)(B - 1)) (B: the refits holding the statistic, n: the patients in
    every one of them). Under the floor at 0 it still counts."""

    variance: float
    between: float
    interaction: float      # MS_int / n
    refits: int
    patients: int = 0

    @property
    def df_term(self) -> float:
        if self.refits < 2 or not math.isfinite(self.between):
            return 0.0
        df_int = max((self.patients - 1) * (self.refits - 1), 1)
        return self.between**2 / (self.refits - 1) + self.interaction**2 / df_int


NO_GENERATOR_TERM = GeneratorTerm(float("nan"), float("nan"), float("nan"), 0)   # no refits: patient term only


def two_way_term(pseudo: pd.DataFrame) -> GeneratorTerm:
    """The generator term from the refits' pseudo-values (patients x refits; a patient missing
    from any refit is left out, and each refit's estimate is its column's mean over the patients
    kept, so that the between-refit variance and MS_int / n count the same patients)."""
    P = pseudo.dropna().to_numpy(float)
    n, b = P.shape
    if b < 2 or n < 2:
        return GeneratorTerm(float("nan"), float("nan"), float("nan"), b, n)
    between = float(np.var(P.mean(axis=0), ddof=1))
    r = P - P.mean(axis=0, keepdims=True) - P.mean(axis=1, keepdims=True) + P.mean()
    inter = float((r**2).sum() / ((n - 1) * (b - 1)) / n)
    return GeneratorTerm(max(0.0, between - inter), between, inter, b, n)


@dataclass
class GeneratorBootstrap:
    """Per refit b: {statistic key: pseudo-values by patient (their mean is the refit's estimate)}."""

    B: int
    boot_twins: int                  # twins per source in each draw: min(K, boot_twins) of a run
    refits: list[dict] = field(default_factory=list)
    structure_held: bool = False     # the refits kept a fitted structure (`bootstrap_settings`)
    draws: int = 1                   # independent draws of boot_twins twins averaged per refit
    scale: float = 1.0               # r / d of subsampled knowledge bases (delete-d jackknife); 1: bootstrap
    subsample: float | None = None   # the fraction subsampled; None: bootstrap knowledge bases

    def variance(self, key) -> GeneratorTerm:
        """The generator term of one statistic (NaN with fewer than 2 refits holding it)."""
        held = [f[key] for f in self.refits if key in f]
        if len(held) < 2:
            return GeneratorTerm(float("nan"), float("nan"), float("nan"), len(held))
        t = two_way_term(pd.concat(held, axis=1, join="inner"))
        if self.scale == 1.0:
            return t
        return GeneratorTerm(t.variance * self.scale, t.between * self.scale, t.interaction * self.scale,
                             t.refits, t.patients)


def draws_for(count: int, twins_per_refit: int | None) -> int:
    """How many independent draws of ``count`` twins a refit averages: ceil(twins_per_refit /
    count), so that a refit of a small-K run still estimates its twins' expectation from about
    ``twins_per_refit`` twins per source (1 without a target)."""
    return max(1, math.ceil(int(twins_per_refit) / int(count))) if twins_per_refit else 1


def generator_bootstrap(real: Trial, knowledge_base: Trial, target_arm: str, generator: str = "local",
                        settings: dict | None = None, refits: int = 20, boot_twins: int = 10,
                        seed: int = 0, taus: dict[str, float] | None = None,
                        params: list[str] | None = None,
                        progress: Callable[[int, int], object] | None = None,
                        run_twins: int | None = None, log_params: set[str] | None = None) -> GeneratorBootstrap:
    """Refit the generator on ``refits`` resampled knowledge bases (the sources kept once, never
    drawn: a source cannot borrow from a copy of itself) and twin the same sources (``real``'s
    subjects, baseline only): ``boot_twins`` twins each, or for a run of ``run_twins`` = K
    twins per source min(K, boot_twins) twins, averaged over `draws_for` independent draws
    (`effects` says why). ``log_params``: the parameters with a ratio of geometric means
    (`effect_stats.ratio_parameters`), as in the run's own statistics."""
    count = min(int(run_twins), int(boot_twins)) if run_twins else int(boot_twins)
    return generator_bootstrap_by_twins(real, knowledge_base, target_arm, generator, settings, refits,
                                        (count,), seed, taus, params, progress,
                                        twins_per_refit=boot_twins, log_params=log_params)[count]


def generator_bootstrap_by_twins(real: Trial, knowledge_base: Trial, target_arm: str,
                                 generator: str = "local", settings: dict | None = None,
                                 refits: int = 20, twin_counts: Sequence[int] = (20,), seed: int = 0,
                                 taus: dict[str, float] | None = None, params: list[str] | None = None,
                                 progress: Callable[[int, int], object] | None = None,
                                 twins_per_refit: int | None = None,
                                 log_params: set[str] | None = None,
                                 subsample: float | None = None) -> dict[int, GeneratorBootstrap]:
    """`generator_bootstrap` for several twin counts from the same refits (one fit per refit,
    then each count generated from it): runs of several K each get refits that generate what
    they generated (`effects`: min(K, boot_twins) twins; why the count matters at K = 1 is said
    there). A count c is drawn `draws_for(c, twins_per_refit)` times with independent seeds (the
    first the seed a single draw would use) and each patient's pseudo-values averaged over the
    draws: the refit's expectation for a run of c twins, with the Monte-Carlo noise of about
    ``twins_per_refit`` twins (default: the largest count). A statistic enters a refit only
    when every draw holds it, and a patient only when every draw holds them (the refit's
    estimate is then the mean of its draws' estimates). ``subsample``: refit on that fraction of
    the target arm drawn without replacement instead of a bootstrap knowledge base, the term
    scaled by r / d (`resampling.subsample_knowledge_base`)."""
    counts = sorted({int(c) for c in twin_counts})
    if not counts or counts[0] < 1:
        raise ValueError("boot_twins must be at least 1")
    per_refit = int(twins_per_refit) if twins_per_refit else counts[-1]
    n_draws = {c: draws_for(c, per_refit) for c in counts}
    rng = np.random.default_rng([int(seed), 0xB007])
    sources = real.baseline_only()
    src_ids = list(real.subjects["USUBJID"])
    out: dict[int, list] = {c: [] for c in counts}
    scale = 1.0
    for b in range(int(refits)):
        refit_settings = settings or {}
        if subsample:
            kb_b, r, d = subsample_knowledge_base(knowledge_base, target_arm, rng, src_ids, subsample)
            scale = r / d
            refit_settings = _at_subsample_size(generator, refit_settings, r / (r + d))
        else:
            kb_b = resample_knowledge_base(knowledge_base, target_arm, rng, keep=src_ids)
        gen = make_generator(generator, refit_settings).fit(kb_b)
        for c in counts:
            drawn: dict = {}
            for m in range(n_draws[c]):
                run_b = gen.generate(sources, target_arm=target_arm, twins_per_patient=c,
                                     seed=int(seed) * 7919 + b + 1 + m * 1_000_003)
                st = statistics(real, twin_values(run_b), twin_tte(run_b), taus or {}, params, log_params)
                for k, s in st.items():
                    drawn.setdefault(k, []).append(s.pseudo)
            out[c].append({k: v[0] if n_draws[c] == 1 else pd.concat(v, axis=1, join="inner").mean(axis=1)
                           for k, v in drawn.items() if len(v) == n_draws[c]})
        if progress is not None:
            progress(b + 1, int(refits))
    held = bool((settings or {}).get("structure"))
    return {c: GeneratorBootstrap(int(refits), c, out[c], structure_held=held,
                                  draws=n_draws[c], scale=scale,
                                  subsample=subsample or None) for c in counts}
