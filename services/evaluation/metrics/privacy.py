"""Privacy: do the twins give away the patients they were generated from?

All distances are Euclidean in the standardised feature space. "Training" records are the
real patients the generator could see (the knowledge base); "holdout" records are real
patients it never saw, used as the yardstick of how close an unrelated new patient gets.
Missing values are mean-imputed with the training records' column means (see
:func:`services.evaluation.metrics.registry.impute_means`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.retrieval.knn import exact_knn

from .registry import ResultMixin, impute_means


def _nn_distances(queries: np.ndarray, reference: np.ndarray, k: int = 1,
                  metric: str = "euclidean") -> np.ndarray:
    """Distances (n_queries x k) from each query to its k nearest reference rows, ascending."""
    return exact_knn(queries, reference, k, metric)[1]


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return float(a / b)
    return float("nan") if a == 0 or np.isnan(a) else float("inf")


@dataclass(frozen=True)
class DCRResult(ResultMixin):
    """Distance to closest record (DCR) of twins and of holdout patients to the training set.

    ``ratio_median`` = twin_median / holdout_median and ``ratio_p5`` = twin_p5 / holdout_p5:
    >= 1 is good (twins are no closer to training patients than new real patients are);
    near 0 means twins copy training patients. The per-record distances are kept for plots.
    """

    twin_median: float
    twin_p5: float
    holdout_median: float
    holdout_p5: float
    ratio_median: float
    ratio_p5: float
    n_twin: int
    n_train: int
    n_holdout: int
    twin_distances: np.ndarray = field(repr=False, compare=False, default=None)
    holdout_distances: np.ndarray = field(repr=False, compare=False, default=None)


def median_ratio_interval(a, b, seed: int = 0, n_boot: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(a) / median(b), resampling `a` and `b`
    independently (`n_boot` resamples, seeded). Used for the DCR ratio: resampling single
    distances ignores that twins of one patient are alike, so the interval is if anything
    too narrow; (nan, nan) when either sample is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ma / mb
    tail = 100 * (1 - level) / 2
    return (float(np.nanpercentile(ratios, tail)), float(np.nanpercentile(ratios, 100 - tail)))


def distance_to_closest_record(twin_X, train_X, holdout_X) -> DCRResult:
    """Median and 5th-percentile distance from twins, and from holdout patients, to their
    closest training record, and the twin/holdout ratios.

    Both sets are measured against the same reference (the training records), so the
    comparison does not depend on the twin or holdout set sizes. NaN are imputed with the
    training column means. A ratio with a zero denominator is +inf (or NaN if the numerator
    is 0 too).
    """
    train, twin, holdout = impute_means(train_X, twin_X, holdout_X)
    if min(train.shape[0], twin.shape[0], holdout.shape[0]) == 0:
        raise ValueError("twin, train and holdout sets must all be non-empty")
    d_twin = _nn_distances(twin, train)[:, 0]
    d_hold = _nn_distances(holdout, train)[:, 0]
    tm, t5 = float(np.median(d_twin)), float(np.percentile(d_twin, 5))
    hm, h5 = float(np.median(d_hold)), float(np.percentile(d_hold, 5))
    return DCRResult(
        twin_median=tm, twin_p5=t5, holdout_median=hm, holdout_p5=h5,
        ratio_median=_ratio(tm, hm), ratio_p5=_ratio(t5, h5),
        n_twin=int(twin.shape[0]), n_train=int(train.shape[0]), n_holdout=int(holdout.shape[0]),
        twin_distances=d_twin, holdout_distances=d_hold,
    )


@dataclass(frozen=True)
class NNAAResult(ResultMixin):
    """Nearest-neighbour adversarial accuracy (Yale et al. 2020).

    ``nnaa`` = (``aa_real`` + ``aa_twin``) / 2 where ``aa_real`` is the share of real points
    whose nearest twin is farther than their nearest other real point, and ``aa_twin`` the
    share of twins whose nearest real point is farther than their nearest other twin.
    0.5 ideal; ~0 = twins copy real points (overfitting, privacy risk); ~1 = twins unlike the
    real data (poor fidelity). ``privacy_loss`` = NNAA(holdout, twins) - NNAA(train, twins)
    when a holdout set is given (NaN otherwise); > 0 means twins are closer to training
    patients than to unseen ones. ``n`` is the number of points per side after balancing.
    """

    nnaa: float
    aa_real: float
    aa_twin: float
    privacy_loss: float
    nnaa_holdout: float
    n: int


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator):
    n = min(a.shape[0], b.shape[0])
    if a.shape[0] > n:
        a = a[np.sort(rng.choice(a.shape[0], n, replace=False))]
    if b.shape[0] > n:
        b = b[np.sort(rng.choice(b.shape[0], n, replace=False))]
    return a, b


def _aa(real: np.ndarray, twin: np.ndarray) -> tuple[float, float]:
    d_rt = _nn_distances(real, twin)[:, 0]
    d_rr = _nn_distances(real, real, k=2)[:, 1]  # leave-one-out: column 0 is the point itself
    d_tr = _nn_distances(twin, real)[:, 0]
    d_tt = _nn_distances(twin, twin, k=2)[:, 1]
    return float(np.mean(d_rt > d_rr)), float(np.mean(d_tr > d_tt))


def nn_adversarial_accuracy(real_X, twin_X, holdout_X=None, seed: int = 0) -> NNAAResult:
    """Nearest-neighbour adversarial accuracy of twins against real (training) patients.

    Follows Yale et al. (2020): a point "fools" the nearest-neighbour adversary when its
    nearest neighbour in the other set is closer than (or as close as) its nearest neighbour
    in its own set (leave-one-out); the strict ">" of the paper is used, so exact copies
    count as fooling. The definition assumes equally many real and synthetic points (within-set
    neighbour distances shrink as a set grows), so the larger set is randomly subsampled to
    the size of the smaller one with ``seed``. Needs >= 2 points per side. NaN are imputed
    with the real patients' column means.

    If ``holdout_X`` (real patients unseen by the generator) is given, ``nnaa_holdout`` is the
    same statistic against it and ``privacy_loss = nnaa_holdout - nnaa``.
    """
    args = (real_X, twin_X) if holdout_X is None else (real_X, twin_X, holdout_X)
    mats = impute_means(*args)
    real, twin = mats[0], mats[1]
    rng = np.random.default_rng(seed)
    r, t = _balanced(real, twin, rng)
    if r.shape[0] < 2:
        raise ValueError("NNAA needs at least 2 real and 2 twin points")
    aa_r, aa_t = _aa(r, t)
    nnaa = (aa_r + aa_t) / 2.0
    nnaa_h = loss = float("nan")
    if holdout_X is not None:
        h, t2 = _balanced(mats[2], twin, rng)
        if h.shape[0] >= 2:
            nnaa_h = float(np.mean(_aa(h, t2)))
            loss = nnaa_h - nnaa
    return NNAAResult(nnaa=float(nnaa), aa_real=aa_r, aa_twin=aa_t, privacy_loss=float(loss),
                      nnaa_holdout=float(nnaa_h), n=int(r.shape[0]))


@dataclass(frozen=True)
class MembershipResult(ResultMixin):
    """Distance-threshold membership (presence-disclosure) attack.

    Candidates are the training records (members) and the holdout records (non-members);
    a candidate is claimed a member when its closest twin is within ``threshold``.
    ``sensitivity`` = members flagged / members; ``false_positive_rate`` = non-members
    flagged / non-members; ``precision`` = correct claims / claims (NaN with no claim);
    ``accuracy`` over all candidates; ``balanced_accuracy`` = (sensitivity + 1 - FPR) / 2;
    ``advantage`` = sensitivity - FPR (Yeom et al. 2018; 0 = nothing learnt).
    ``prevalence`` = members / candidates is the precision of a guess when nothing leaks.
    """

    sensitivity: float
    false_positive_rate: float
    precision: float
    accuracy: float
    balanced_accuracy: float
    advantage: float
    prevalence: float
    threshold: float
    threshold_rule: str
    n_members: int
    n_non_members: int


def membership_inference(twin_X, train_X, holdout_X, threshold: float | None = None
                         ) -> MembershipResult:
    """Presence-disclosure attack: "member" if some twin lies within ``threshold`` of a record.

    Default threshold: the 5th percentile of the distances from holdout patients to their
    closest training record, i.e. closer than 95% of genuinely new patients get to anyone in
    the training set. Twins from a generator that does not memorise sit about as close to
    training records as to holdout records, so sensitivity ~ false-positive rate (~5% at
    that threshold) and precision ~ prevalence; twins copying training records put those
    records at distance 0 and drive sensitivity to 1. The threshold is an auditor's choice
    (it uses the holdout set); pass ``threshold`` to fix it, e.g. 0 for exact matches.
    NaN are imputed with the training column means.
    """
    train, twin, holdout = impute_means(train_X, twin_X, holdout_X)
    if min(train.shape[0], twin.shape[0], holdout.shape[0]) == 0:
        raise ValueError("twin, train and holdout sets must all be non-empty")
    if threshold is None:
        threshold = float(np.percentile(_nn_distances(holdout, train)[:, 0], 5))
        rule = "5th percentile of holdout-to-training closest-record distances"
    else:
        threshold = float(threshold)
        rule = "user-supplied"
    d_mem = _nn_distances(train, twin)[:, 0]
    d_non = _nn_distances(holdout, twin)[:, 0]
    tp = int(np.sum(d_mem <= threshold))
    fp = int(np.sum(d_non <= threshold))
    n_mem, n_non = d_mem.size, d_non.size
    sens = tp / n_mem
    fpr = fp / n_non
    claims = tp + fp
    return MembershipResult(
        sensitivity=float(sens),
        false_positive_rate=float(fpr),
        precision=float(tp / claims) if claims else float("nan"),
        accuracy=float((tp + n_non - fp) / (n_mem + n_non)),
        balanced_accuracy=float((sens + 1.0 - fpr) / 2.0),
        advantage=float(sens - fpr),
        prevalence=float(n_mem / (n_mem + n_non)),
        threshold=threshold,
        threshold_rule=rule,
        n_members=int(n_mem),
        n_non_members=int(n_non),
    )


@dataclass(frozen=True)
class CopiesResult(ResultMixin):
    """Twins identical to a training record: count, fraction of twins, and their row indices."""

    n_copies: int
    fraction: float
    n_twin: int
    tol: float
    twin_indices: tuple[int, ...] = field(repr=False, default=())


def exact_copies(twin_X, train_X, tol: float = 1e-8) -> CopiesResult:
    """Count twins whose every feature is within ``tol`` of some training record.

    Uses the largest absolute feature difference (Chebyshev distance) to the closest training
    record, so ``tol`` is per feature in standardised units. NaN are imputed with the training
    column means first, so a missing value matches a training value equal to that mean (and
    two records missing in the same places match there).
    """
    train, twin = impute_means(train_X, twin_X)
    if twin.shape[0] == 0:
        return CopiesResult(0, float("nan"), 0, float(tol), ())
    if train.shape[0] == 0:
        return CopiesResult(0, 0.0, int(twin.shape[0]), float(tol), ())
    d = _nn_distances(twin, train, metric="chebyshev")[:, 0]
    idx = np.flatnonzero(d <= tol)
    return CopiesResult(
        n_copies=int(idx.size),
        fraction=float(idx.size / twin.shape[0]),
        n_twin=int(twin.shape[0]),
        tol=float(tol),
        twin_indices=tuple(int(i) for i in idx),
    )


def record_copies(twins: np.ndarray, train: np.ndarray, event_column: list[bool], tol: float = 1e-8) -> dict:
    """Twins that carry a real patient's whole post-baseline trajectory: equal to one on every
    visit column, whatever their event days (so a copied trajectory is found even when the
    event draws differ), or, in a trial with events only, on every event column (days and
    status). `by_part`: the copies of each part on its own (in a trial with visits, a twin
    whose event record alone equals a real patient's is counted there, not as a copy: on whole
    days and a 0/1 status records meet by chance). `real_to_real`: the share of real patients
    whose record of the copy's part equals another real patient's (that chance)."""
    event_column = np.asarray(event_column, bool)
    parts = {"visits": ~event_column, "events": event_column}
    by_part, found = {}, {}
    for part, cols in parts.items():
        if cols.any():
            res = exact_copies(twins[:, cols], train[:, cols], tol=tol)
            by_part[part], found[part] = res.n_copies, res.twin_indices
    main = "visits" if (~event_column).any() else "events"
    (ref,) = impute_means(train[:, parts[main]])
    _, inverse, counts = np.unique(np.round(ref, 10), axis=0, return_inverse=True, return_counts=True)
    n = len(twins)
    return {"n_copies": len(found[main]), "fraction": len(found[main]) / n if n else float("nan"), "n_twin": n,
            "tol": tol, "compared": main, "by_part": by_part,
            "real_to_real": float((counts[np.ravel(inverse)] > 1).mean()) if len(train) else float("nan")}
