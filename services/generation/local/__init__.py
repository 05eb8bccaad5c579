"""`local`: the default, offline twin generator (no network, no model download).

Method (fitted on the TARGET arm of the knowledge base, once per arm, cached). Every choice
below was measured with `bench/backtest.py` (see the report in its docstring).

1. **Prognostic mean.** For every longitudinal parameter p and scheduled visit v with at
   least `min_visit_subjects` observed patients in the target arm: a ridge regression of the
   value on the baseline: the baseline of p (practically unpenalised), the baselines of the
   other parameters and the ADSL covariates (continuous standardised, categorical one-hot,
   mean-imputed with missing indicators). The slopes are shared by the visits of p (fitted on
   the stacked, visit-centred data; penalty by 5-fold cross-validation over patients with the
   one-standard-error rule), each visit keeping its own intercept and its own slope on the
   baseline of p (regression to the mean changes with time; GCV-chosen shrinkage towards the
   shared slope). With little data the model falls back to "value ~ baseline of p".
   Clearly right-skewed positive baselines (bilirubin, counts) enter on the log (log1p with
   zeros) scale; the outcome of such a parameter is modelled on the log or the raw scale,
   whichever predicts the raw values better out of fold (smearing estimate on the log scale),
   unless the raw scale would put more than 1% of values below the parameter's plausible
   floor (bilirubin: 15% of twins were clipped) (`transform="auto"`; "log", "features"
   (log baselines, raw outcomes) and "none" force a choice).
   The mean stays within the observed range +-25%.
2. **Cross-fitting.** The target arm is split into `cv_folds` folds; a patient's residuals
   come from the model fitted on the other folds (out-of-fold residuals keep the real spread:
   in-sample residuals are shrunk). A source that is itself in the target arm is predicted by
   the model (and clip range, residual covariance, Cox model) of the folds that exclude it, so
   none of its own follow-up is used.
3. **Residual trajectory from a neighbour.** Each twin borrows the whole residual vector of
   one donor (all visits and parameters at once, so correlations across visits and
   parameters are kept), a donor among the source's `neighbors` nearest patients of the target
   arm (the retriever's; the source itself is never one). Donors follow one weighted random
   order per source (weights decrease with retrieval distance): twin t takes donor t, so a
   source's twins have distinct donors while K <= neighbors (the neighbourhood grows to K
   patients when K is larger and the arm allows).
   - *Missed visits* of a donor are completed from its own observed residuals: a draw from the
     conditional normal given them (covariance: pairwise correlations of residuals winsorised
     at 3 robust SDs, shrunk 10% towards the identity, times each visit's SD), seeded by (seed,
     donor). Each trajectory stays coherent (a donor doing badly early keeps doing badly)
     instead of splicing patients together; this measured better than borrowing the visit
     from the next neighbour who attended it (`fill="observed"`: coverage 70-78% vs 79-84%
     on pbc, RMSE ratio 0.94-1.02 vs 0.75-1.00).
   - *Re-centring*: the neighbourhood's residual vectors are re-centred on lam x their
     weighted mean (x sqrt(n_eff / (n_eff - 1)) to keep the variance), lam per parameter =
     how much the neighbourhood mean residual predicts a patient's own residual in the arm
     (least squares, clipped to [0, 1]). So the twins' mean carries only the informative part
     of the neighbours' mean, not its sampling noise (`center`).
   - `smoothing` h > 0: the residual is shrunk by sqrt(1 - h^2) and Gaussian noise with the
     residual covariance x h^2 is added (smoothed bootstrap: same variance and
     correlations). Applied with h >= 0.5 to a twin whose donor repeats (K > arm size - 1).
4. **Values.** mean + residual, back-transformed, clipped to the parameter's observed range
   in the target arm widened by `clip_margin` x range (never below half the smallest value
   for positive parameters, never below 0 for non-negative ones); integer parameters (every observed value a whole number) are rounded.
   `ADY` = the visit's nominal (median) study day.
5. **Visits generated** (`visits`): `"all"` (default): a value at every scheduled visit with
   at least `min_visit_subjects` patients in the target arm (a complete trajectory: the
   outcome had the patient stayed; the estimand of a hypothetical strategy);
   `"neighbour"`: only the visits the twin's donor attended (mimics drop-out).
6. **Time to event** (when the knowledge base has ADTTE). Neighbours *in prognosis*: the
   source's `tte_neighbors` nearest target-arm patients in the linear predictor of a ridge
   Cox model (`cox_penalizer`, cross-fitted like the means, same baseline features) of the
   event type with the most events; Gaussian kernel weights on the predictor difference
   (`tte_space="prognostic"`; `"retrieval"` uses the retriever's neighbours: C-index 0.75 vs
   0.80 on pbc). `tte_draw="history"` (default): twin t copies the event history of donor t
   of a weighted random order of these neighbours (every event type at once: time and
   censoring, so the censoring pattern is real and nested endpoints stay coherent, e.g. death
   censored at a transplant), times x exp(0.05 z) (one z per twin, capped at the
   neighbourhood's last follow-up). The twins' pooled curve is the neighbourhood's weighted
   Kaplan-Meier in expectation. `tte_draw="km"`: per event type, an event time drawn from the
   neighbourhood's weighted Kaplan-Meier curve (inverse transform at the curve's step,
   jittered +-10% of the gap to the previous event; beyond the last event = no event) and a
   censoring time from its reverse Kaplan-Meier (beyond it: the neighbourhood's last
   follow-up, i.e. administrative censoring); AVAL = the earlier, CNSR = 1 when censored
   first; event types share random numbers. Both measure alike (KM distance ratio 0.96 vs
   0.94, C-index 0.80 vs 0.80 on pbc, 8 splits); "history" is coherent across event types.

Randomness is counter-based (`base.uniforms`): each draw is a pure function of (seed, source
or donor, twin index, purpose), so results do not depend on batch, order or concurrency.
Leakage: the sources' post-baseline data are never read (`prepare_sources`). Second-order
dependence remains in donors' out-of-fold residuals (their fold model may have been fitted
with the source) and in the per-parameter transform / integer detection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import ndtri
from scipy.stats import skew
from threadpoolctl import threadpool_limits

from services.data.trial import Trial
from services.generation.base import (
    CancelLike,
    GeneratorError,
    ProgressFn,
    TwinGenerator,
    base_manifest,
    check_k,
    is_cancelled,
    prepare_sources,
    stable_key,
    uniforms,
)
from services.generation.run import (
    TwinRun,
    assemble_bds,
    baseline_records,
    new_run_id,
    truncate_at_followup,
    twin_adsl,
    twin_id,
    twin_ids,
    utc_now,
)

TRANSFORMS = ("auto", "log", "features", "none")
VISIT_MODES = ("all", "neighbour")
TTE_SPACES = ("prognostic", "retrieval")
TTE_DRAWS = ("history", "km")
FILLS = ("observed", "complete")
_OWN_PENALTY = 1e-4          # relative ridge penalty on the parameter's own baseline
_ALPHAS = np.logspace(-3, 2.5, 12)  # ridge penalties, relative to the number of patients
# random streams
_S_DONOR, _S_COMPLETE, _S_EVENT, _S_CENSOR, _S_NOISE = 1, 2, 3, 4, 5


# ==========================================================================================
# retriever used only when services.retrieval.retriever is not importable


class Neighbour(NamedTuple):
    usubjid: str
    arm: str
    similarity: float
    distance: float


class BaselineKNN:
    """Exact cosine k-NN on standardised baseline features (values of every parameter and
    ADSL covariates). Fallback with the same protocol as `services.retrieval.retriever.Retriever`."""

    space = "baseline"

    def __init__(self, trial: Trial, space: str = "baseline"):
        self.trial = trial
        params = list(trial.parameters)
        self.features = BaselineFeatures(params, trial.covariates, transforms=None)
        ids = list(trial.subjects["USUBJID"])
        self.features.fit(trial, ids)
        X = self.features.transform(trial, ids)
        self._ids = np.asarray(ids, dtype=object)
        self._arms = trial.subjects["ARM"].to_numpy(dtype=object)
        self._X = _unit_rows(X)

    def neighbours_many(self, query, arm: str, k: int) -> dict[str, list[Neighbour]]:
        if isinstance(query, Trial):
            qids = list(query.subjects["USUBJID"])
            Q = _unit_rows(self.features.transform(query, qids))
        else:
            qids = [str(q) for q in query]
            pos = {u: i for i, u in enumerate(self._ids)}
            missing = [q for q in qids if q not in pos]
            if missing:
                raise KeyError(f"not in the knowledge base: {', '.join(missing[:3])}")
            Q = self._X[[pos[q] for q in qids]]
        cand = np.flatnonzero(self._arms == arm)
        sims = Q @ self._X[cand].T
        out = {}
        for i, q in enumerate(qids):
            order = np.lexsort((self._ids[cand], -sims[i]))
            hits = []
            for j in order:
                if self._ids[cand[j]] == q:
                    continue
                s = float(sims[i, j])
                hits.append(Neighbour(str(self._ids[cand[j]]), arm, s, 1.0 - s))
                if len(hits) >= k:
                    break
            out[q] = hits
        return out


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


def default_retriever_factory(kb: Trial):
    """The project's retriever (Chroma, baseline space); the internal exact k-NN only when
    `services.retrieval.retriever` is not importable."""
    try:
        from services.retrieval.retriever import Retriever
    except ImportError:
        return BaselineKNN(kb)
    return Retriever(kb, space="baseline")


# ==========================================================================================
# baseline features


def choose_transform(values: np.ndarray) -> str:
    """'log' / 'log1p' for clearly right-skewed non-negative values, else 'identity'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 20 or v.min() < 0 or np.ptp(v) == 0:
        return "identity"
    s = skew(v)
    if not np.isfinite(s) or s < 1.0:
        return "identity"
    name, t = ("log", np.log(v)) if v.min() > 0 else ("log1p", np.log1p(v))
    st = skew(t)
    return name if np.isfinite(st) and abs(st) < 0.5 * s else "identity"


def forward(values, how: str):
    if how == "log":
        return np.log(np.maximum(values, 1e-12))
    if how == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    return values


def inverse(values, how: str):
    if how == "log":
        return np.exp(np.minimum(values, 700))
    if how == "log1p":
        return np.expm1(np.minimum(values, 700))
    return values


class BaselineFeatures:
    """Design matrix of baseline facts: parameter baselines (transformed), continuous
    covariates, one-hot categorical covariates (levels seen >= `min_level` times, most
    frequent level as reference), missing indicators; standardised on the fitting patients,
    missing values set to the fitting mean (0)."""

    def __init__(self, params: list[str], covariates: dict[str, str],
                 transforms: dict[str, str] | None = None, min_level: int = 3):
        self.params = list(params)
        self.covariates = dict(covariates)
        self.transforms = dict(transforms or {})
        self.min_level = min_level

    def _raw(self, trial: Trial, ids: list[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
        base = trial.baseline.reindex(index=ids, columns=self.params)
        cols: dict[str, np.ndarray] = {}
        for p in self.params:
            cols[f"BL:{p}"] = forward(base[p].to_numpy(dtype=float), self.transforms.get(p, "identity"))
        subj = trial.subjects.set_index("USUBJID").reindex(ids)
        return cols, subj

    def fit(self, trial: Trial, ids: list[str]) -> BaselineFeatures:
        cols, subj = self._raw(trial, ids)
        spec = []
        for p in self.params:
            v = cols[f"BL:{p}"]
            if np.isfinite(v).sum() >= 2 and np.nanstd(v) > 0:
                spec.append(("BL", p, None))
                if np.isnan(v).any():
                    spec.append(("MISS", p, None))
        self.levels: dict[str, list[str]] = {}
        for c, kind in self.covariates.items():
            if c not in subj.columns:
                continue
            if kind == "continuous":
                v = pd.to_numeric(subj[c], errors="coerce").to_numpy(dtype=float)
                if np.isfinite(v).sum() >= 2 and np.nanstd(v) > 0:
                    spec.append(("COV", c, None))
                    if np.isnan(v).any():
                        spec.append(("CMISS", c, None))
            else:
                counts = subj[c].dropna().astype(str).value_counts()
                keep = [lvl for lvl, n in counts.items() if n >= self.min_level]
                for lvl in keep[1:]:
                    spec.append(("CAT", c, lvl))
        self.spec = spec
        self.columns = [f"{a}:{b}" + (f"={c}" if c is not None else "") for a, b, c in spec]
        X = self._matrix(cols, subj)
        self.mean_ = np.nanmean(X, axis=0) if len(X) else np.zeros(X.shape[1])
        sd = np.nanstd(X, axis=0) if len(X) else np.ones(X.shape[1])
        self.sd_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.mean_ = np.where(np.isfinite(self.mean_), self.mean_, 0.0)
        return self

    def _matrix(self, cols, subj) -> np.ndarray:
        n = len(subj)
        X = np.empty((n, len(self.spec)))
        for j, (kind, name, lvl) in enumerate(self.spec):
            if kind == "BL":
                X[:, j] = cols[f"BL:{name}"]
            elif kind == "MISS":
                X[:, j] = np.isnan(cols[f"BL:{name}"]).astype(float)
            elif kind == "COV":
                X[:, j] = pd.to_numeric(subj[name], errors="coerce").to_numpy(dtype=float) \
                    if name in subj else np.nan
            elif kind == "CMISS":
                X[:, j] = pd.to_numeric(subj[name], errors="coerce").isna().to_numpy(dtype=float) \
                    if name in subj else 1.0
            else:
                X[:, j] = (subj[name].astype(str) == lvl).to_numpy(dtype=float) if name in subj else 0.0
        return X

    def transform(self, trial: Trial, ids: list[str]) -> np.ndarray:
        cols, subj = self._raw(trial, ids)
        Z = (self._matrix(cols, subj) - self.mean_) / self.sd_
        return np.where(np.isfinite(Z), Z, 0.0)

    def column(self, paramcd: str) -> int | None:
        name = f"BL:{paramcd}"
        return self.columns.index(name) if name in self.columns else None


# ==========================================================================================
# ridge with generalised cross-validation


def ridge_path(X: np.ndarray, y: np.ndarray, penalty: np.ndarray, alphas: np.ndarray | None = None):
    """Ridge regressions of y on X over a grid of penalties (intercept unpenalised; column j
    penalised with weight penalty[j]; penalties relative to the number of rows).
    Returns (b0 (A,), beta (A, F), gcv (A,)): gcv is the generalised cross-validation
    estimate of the mean squared prediction error (inf where the fit has no residual df)."""
    alphas = _ALPHAS if alphas is None else np.asarray(alphas, dtype=float)
    n, f = X.shape
    A = len(alphas)
    ym = float(y.mean()) if n else 0.0
    if n < 3 or f == 0:
        gcv = np.full(A, float(np.var(y)) * n / max(n - 1, 1) if n > 1 else np.inf)
        return np.full(A, ym), np.zeros((A, f)), gcv
    xm = X.mean(axis=0)
    scale = 1.0 / np.sqrt(penalty)
    Xc = (X - xm) * scale
    yc = y - ym
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    uty = U.T @ yc
    resid_perp = max(float(yc @ yc - uty @ uty), 0.0)
    a = alphas * n
    s2 = s ** 2
    shrink = s2[None, :] / (s2[None, :] + a[:, None])                  # (A, r)
    rss = resid_perp + (((1 - shrink) * uty[None, :]) ** 2).sum(axis=1)
    df = shrink.sum(axis=1) + 1.0
    gcv = np.where(df < n - 1, rss / n / np.maximum(1 - df / n, 1e-9) ** 2, np.inf)
    coef = (s[None, :] / (s2[None, :] + a[:, None])) * uty[None, :]     # (A, r)
    beta = (coef @ Vt) * scale[None, :]
    return ym - beta @ xm, beta, gcv


def cox_ridge(X: np.ndarray, time_: np.ndarray, event: np.ndarray, penalizer: float = 0.1,
              iterations: int = 30) -> np.ndarray:
    """Cox proportional hazards slopes (Breslow ties) with a ridge penalty: maximises
    loglik / n - penalizer / 2 * |beta|^2 by Newton's method (X standardised)."""
    n, F = X.shape
    event = np.asarray(event, dtype=bool)
    if n < 3 or F == 0 or event.sum() == 0:
        return np.zeros(F)
    order = np.argsort(-time_, kind="stable")                  # longest first: risk sets = prefixes
    X, t, e = X[order], time_[order], event[order]
    # last index of each tie group (risk set of a time includes every tie)
    _, first_rev = np.unique(-t, return_index=True)
    group_end = np.empty(n, dtype=int)
    starts = np.sort(first_rev)
    ends = np.append(starts[1:], n) - 1
    for a, b in zip(starts, ends):
        group_end[a:b + 1] = b
    beta = np.zeros(F)

    def objective(b):
        eta = X @ b
        mx = eta.max()
        r = np.exp(eta - mx)
        s0 = np.cumsum(r)[group_end]
        ll = float(np.sum(eta[e] - mx - np.log(s0[e])))
        return ll / n - 0.5 * penalizer * float(b @ b), r, s0

    obj, r, s0 = objective(beta)
    for _ in range(iterations):
        s1 = np.cumsum(r[:, None] * X, axis=0)[group_end]
        xbar = s1 / s0[:, None]
        grad = (X[e] - xbar[e]).sum(axis=0) / n - penalizer * beta
        s2 = np.cumsum(r[:, None, None] * (X[:, :, None] * X[:, None, :]), axis=0)[group_end]
        info = (s2[e] / s0[e][:, None, None] - xbar[e][:, :, None] * xbar[e][:, None, :]).sum(axis=0) / n
        hess = info + penalizer * np.eye(F)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-4:
            cand = beta + scale * step
            c_obj, c_r, c_s0 = objective(cand)
            if c_obj >= obj - 1e-12:
                break
            scale /= 2
        else:
            break
        converged = abs(c_obj - obj) < 1e-9
        beta, obj, r, s0 = cand, c_obj, c_r, c_s0
        if converged:
            break
    return beta


def _choose(err: np.ndarray) -> int:
    return int(np.argmin(err)) if np.isfinite(err).any() else len(err) - 1


_JITTER = 0.2      # km draws: event-time jitter, +-10% of the gap to the previous event
_TIME_JITTER = 0.05  # history draws: times x exp(0.05 z)
_MAX_CLIPPED = 0.01  # a raw-scale model may clip at most 1% of values at the lower bound


def _stack(X: np.ndarray, Y: np.ndarray, rows: np.ndarray):
    """Visit-centred stacked data of the patients `rows`, and the visits' means."""
    xs, ys, means = [], [], []
    for j in range(Y.shape[1]):
        ok = rows & np.isfinite(Y[:, j])
        if ok.sum() >= 2:
            mx, my = X[ok].mean(axis=0), Y[ok, j].mean()
            xs.append(X[ok] - mx)
            ys.append(Y[ok, j] - my)
            means.append((j, mx, my))
        else:
            means.append((j, None, None))
    if not xs:
        return None, None, means
    return np.vstack(xs), np.concatenate(ys), means


def _shared_slopes(X: np.ndarray, Y: np.ndarray, pen: np.ndarray, alphas: np.ndarray,
                   inner: int = 5) -> np.ndarray:
    """Slopes shared by all visits of a parameter: ridge on the stacked visit-centred data,
    penalty chosen by cross-validation over patients (rows of one patient are correlated, so
    GCV over stacked rows would under-penalise)."""
    n, F = X.shape
    everyone = np.ones(n, dtype=bool)
    Xs, ys, _ = _stack(X, Y, everyone)
    if Xs is None:
        return np.zeros(F)
    if len(alphas) == 1 or n < 2 * inner:
        _, bt, gcv = ridge_path(Xs, ys, pen, alphas)
        return bt[_choose(gcv)]
    group = np.arange(n) % inner
    sse = np.zeros((inner, len(alphas)))
    for g in range(inner):
        train = group != g
        Xt, yt, means = _stack(X, Y, train)
        if Xt is None:
            continue
        _, bt, _ = ridge_path(Xt, yt, pen, alphas)           # (A, F)
        for j, mx, my in means:
            held = (group == g) & np.isfinite(Y[:, j])
            if mx is None or not held.any():
                continue
            pred = my + (X[held] - mx) @ bt.T                   # (h, A)
            sse[g] += ((pred - Y[held, j][:, None]) ** 2).sum(axis=0)
    _, bt, _ = ridge_path(Xs, ys, pen, alphas)
    total = sse.sum(axis=0)
    best = _choose(total)
    # one-standard-error rule: the largest penalty within one SE of the best CV error
    se = np.std(sse[:, best], ddof=1) * np.sqrt(inner)
    best = int(np.flatnonzero(total <= total[best] + se).max())
    return bt[best]


def _fit_parameter(X: np.ndarray, Y: np.ndarray, pen: np.ndarray, alphas: np.ndarray,
                   pool: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ridge models of the visits (columns of Y, NaN = missing) of one parameter on X.
    pool=True: stage 1 fits slopes shared by all visits on the stacked, visit-centred data;
    stage 2 fits per-visit deviations from them (all columns penalised). pool=False:
    separate ridges. Penalties are chosen by GCV pooled over the visits.
    Returns intercepts (J,) and slopes (J, F)."""
    J, F = Y.shape[1], X.shape[1]
    obs = [np.isfinite(Y[:, j]) for j in range(J)]
    shared = _shared_slopes(X, Y, pen, alphas) if pool else np.zeros(F)
    A = len(alphas)
    b0s = np.zeros((J, A))
    betas = np.zeros((J, A, F))
    err = np.zeros(A)
    base_pen = np.ones(F) if pool else pen
    cols = np.arange(F)
    if pool:   # per-visit deviation of the slope on the parameter's own baseline only
        cols = np.flatnonzero(pen < 1)
    for j in range(J):
        if not obs[j].any():
            continue
        xj, yj = X[obs[j]], Y[obs[j], j] - X[obs[j]] @ shared
        b, bt_sub, gcv = ridge_path(xj[:, cols], yj, base_pen[cols], alphas)
        bt = np.zeros((len(alphas), F))
        bt[:, cols] = bt_sub
        b0s[j], betas[j] = b, bt + shared[None, :]
        err += np.where(np.isfinite(gcv), gcv * len(yj), 0.0) if np.isfinite(gcv).any() else 0.0
    a = _choose(np.where(err > 0, err, np.inf)) if (err > 0).any() else A - 1
    return b0s[:, a], betas[:, a]


def ridge_gcv(X: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> tuple[float, np.ndarray]:
    """The ridge fit of `ridge_path` with the smallest GCV error. Returns (b0, beta)."""
    b0, beta, gcv = ridge_path(X, y, penalty)
    i = int(np.argmin(gcv)) if np.isfinite(gcv).any() else len(gcv) - 1
    return float(b0[i]), beta[i]


# ==========================================================================================
# the fitted model of one target arm


@dataclass
class _Outcome:
    paramcd: str
    dataset: str
    avisitn: float
    avisit: str
    ady: float


@dataclass
class _ArmModel:
    arm: str
    ids: np.ndarray                    # target-arm subjects (KB ADSL order)
    fold: np.ndarray                   # their fold
    features: BaselineFeatures
    outcomes: list[_Outcome]
    transforms: dict[str, str]
    b0: np.ndarray                     # (folds + 1, D): fold models then the full model
    beta: np.ndarray                   # (folds + 1, D, F)
    resid: np.ndarray                  # (n, D) out-of-fold residuals, NaN where missing
    sigma: np.ndarray                  # (folds + 1, D, D) residual covariance
    sigma_root: np.ndarray             # (folds + 1, D, D) a square root of it
    mean_lo: np.ndarray                # (D,) bounds of the mean on the transformed scale
    mean_hi: np.ndarray
    lo: np.ndarray                     # (folds + 1, D) clip bounds on the raw scale
    hi: np.ndarray
    integer: np.ndarray                # (D,) bool
    lam: np.ndarray | None = None      # (D,) weight of the neighbourhood's mean residual
    completions: dict = field(default_factory=dict)
    X: np.ndarray | None = None        # (n, F) the arm's standardised baseline features
    tte_beta: dict[str, np.ndarray] = field(default_factory=dict)  # q -> (folds + 1, F) Cox slopes
    tte_primary: str = ""              # event type with most events: its Cox model picks donors
    tte: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # q -> (time, cnsr) per arm row
    tte_integer: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.ids)}


class LocalGenerator(TwinGenerator):
    """Offline generator: prognostic ridge mean + a neighbour's cross-fitted residual
    trajectory; neighbour-weighted Kaplan-Meier for time to event (see module docstring)."""

    name = "local"
    description = ("Offline statistical twins: prognostic regression on the baseline plus the "
                   "residual trajectory of a similar patient; event times from the similar "
                   "patients' Kaplan-Meier curve.")

    def __init__(self, neighbors: int = 20, tte_neighbors: int = 20, cv_folds: int = 5,
                 visits: str = "all", min_visit_subjects: int = 10, smoothing: float = 0.0,
                 transform: str = "auto", clip_margin: float = 0.1, alpha: float | None = None,
                 center: str | float = "auto", pool_visits: bool = True,
                 tte_space: str = "prognostic", tte_draw: str = "history", cox_penalizer: float = 0.1,
                 fill: str = "complete", truncate_at_followup: bool = True,
                 chunk_size: int = 256,
                 retriever_factory: Callable[[Trial], object] | None = None):
        if visits not in VISIT_MODES:
            raise GeneratorError(f"visits must be one of {', '.join(VISIT_MODES)}, got {visits!r}")
        if transform not in TRANSFORMS:
            raise GeneratorError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        if int(neighbors) < 1 or int(tte_neighbors) < 1:
            raise GeneratorError("neighbors and tte_neighbors must be >= 1")
        if int(cv_folds) < 2:
            raise GeneratorError("cv_folds must be >= 2")
        if not 0.0 <= float(smoothing) < 1.0:
            raise GeneratorError("smoothing must be in [0, 1)")
        self.neighbors = int(neighbors)
        self.tte_neighbors = int(tte_neighbors)
        self.cv_folds = int(cv_folds)
        self.visits = visits
        self.min_visit_subjects = int(min_visit_subjects)
        self.smoothing = float(smoothing)
        self.transform = transform
        self.clip_margin = float(clip_margin)
        self.alpha = None if alpha is None else float(alpha)
        if not (center in ("auto", "none") or isinstance(center, (int, float))):
            raise GeneratorError(f"center must be 'auto', 'none' or a number in [0, 1], got {center!r}")
        self.center = center
        self.pool_visits = bool(pool_visits)
        if tte_space not in TTE_SPACES:
            raise GeneratorError(f"tte_space must be one of {', '.join(TTE_SPACES)}, got {tte_space!r}")
        self.tte_space = tte_space
        self.cox_penalizer = float(cox_penalizer)
        if tte_draw not in TTE_DRAWS:
            raise GeneratorError(f"tte_draw must be one of {', '.join(TTE_DRAWS)}, got {tte_draw!r}")
        self.tte_draw = tte_draw
        if fill not in FILLS:
            raise GeneratorError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
        self.fill = fill
        self.truncate_at_followup = bool(truncate_at_followup)
        self.chunk_size = int(chunk_size)
        self._retriever_factory = retriever_factory
        self._kb: Trial | None = None
        self._models: dict[str, _ArmModel] = {}
        self._lock = threading.Lock()

    def get_params(self) -> dict:
        params = super().get_params()
        params.pop("retriever_factory", None)
        return params

    # ---------------------------------------------------------------------------------------
    def fit(self, knowledge_base: Trial, retriever=None) -> LocalGenerator:
        if not isinstance(knowledge_base, Trial):
            raise GeneratorError("the knowledge base must be a Trial")
        if knowledge_base.subjects.empty:
            raise GeneratorError(f"the knowledge base {knowledge_base.name} has no subjects")
        self._kb = knowledge_base
        self._models = {}
        t0 = time.perf_counter()
        factory = self._retriever_factory or default_retriever_factory
        self._retriever = retriever if retriever is not None else factory(knowledge_base)
        self._fit_seconds = time.perf_counter() - t0
        return self

    @property
    def retriever(self):
        _ = self.knowledge_base  # raises when not fitted
        return self._retriever

    def arm_model(self, arm: str) -> _ArmModel:
        """The model of one target arm (fitted on first use, then cached; thread-safe)."""
        with self._lock:
            if arm not in self._models:
                self.check_target_arm(arm)
                t0 = time.perf_counter()
                with threadpool_limits(1):   # tiny matrices: threads only add overhead
                    model = self._fit_arm(arm)
                    model.lam = self._fit_lambda(model)
                self._models[arm] = model
                self._fit_seconds += time.perf_counter() - t0
            return self._models[arm]

    def _completed(self, model: _ArmModel, folds_needed, seed: int) -> np.ndarray:
        with self._lock:
            return self._completed_locked(model, folds_needed, seed).copy()

    def _completed_locked(self, model: _ArmModel, folds_needed, seed: int) -> np.ndarray:
        """Residual vectors of the arm's patients with their missed visits completed: a draw
        from the conditional normal given their observed residuals (covariance of the fold
        that excludes the source), seeded by (seed, patient). Shape (folds + 1, n, D); cached
        for the last seed."""
        n, D = model.resid.shape
        cache = model.completions
        if cache.get("seed") != seed:
            cache.clear()
            cache["seed"] = seed
            cache["data"] = np.zeros((model.sigma.shape[0], n, D))
            cache["done"] = set()
        data = cache["data"]
        for f in (int(x) for x in folds_needed):
            if f in cache["done"]:
                continue
            keys = np.array([stable_key(f"donor|{u}") for u in model.ids], dtype=np.uint64)
            z = ndtri(uniforms(seed, keys, 1, _S_COMPLETE, D)[:, 0, :]) if n else np.zeros((0, D))
            data[f] = _complete(model.resid, model.sigma[f], z)
            cache["done"].add(f)
        return data

    def _weights(self, dist: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Donor weights from retrieval distances: Gaussian kernel, bandwidth = the distance of
        the farthest neighbour kept (weights from 1 down to ~0.61)."""
        if dist.shape[1] == 0:
            return np.zeros(dist.shape)
        h = np.nanmax(np.where(valid, dist, np.nan), axis=1, keepdims=True) if valid.any() else \
            np.ones((len(dist), 1))
        h = np.where(np.isfinite(h) & (h > 0), h, 1.0)
        w = np.exp(-0.5 * (np.nan_to_num(dist, nan=0.0) / h) ** 2)
        return np.where(valid, w, 0.0)

    def _fit_lambda(self, model: _ArmModel) -> np.ndarray | None:
        """How much the neighbourhood's mean residual predicts a patient's own residual: per
        parameter, the least-squares slope (clipped to [0, 1]) of the arm patients' residuals
        on their neighbourhood's mean residual. None when centring is off."""
        if self.center == "none" or not model.outcomes:
            return None
        D = len(model.outcomes)
        if self.center != "auto":
            return np.full(D, float(np.clip(float(self.center), 0.0, 1.0)))
        ids = [str(u) for u in model.ids]
        if len(ids) < 4:
            return np.zeros(D)
        m = min(self.neighbors, len(ids) - 1)
        hits = self.retriever.neighbours_many(ids, model.arm, m + 1)
        index = model.index
        nbr = np.full((len(ids), m), -1, dtype=int)
        dist = np.full((len(ids), m), np.nan)
        for i, s in enumerate(ids):
            row = [(index[h.usubjid], float(h.distance)) for h in hits.get(s, [])
                   if h.usubjid != s and h.usubjid in index][:m]
            for j, (r, d) in enumerate(row):
                nbr[i, j], dist[i, j] = r, d
        w = self._weights(dist, nbr >= 0)
        rbar, neff = _neighbourhood_mean(model.resid, nbr, w)
        lam = np.zeros(D)
        for p in dict.fromkeys(o.paramcd for o in model.outcomes):
            cols = [j for j, o in enumerate(model.outcomes) if o.paramcd == p]
            r = model.resid[:, cols]
            b = rbar[:, cols]
            ok = np.isfinite(r) & (neff[:, cols] >= 3)
            den = float((b[ok] ** 2).sum())
            lam[cols] = float(np.clip((r[ok] * b[ok]).sum() / den, 0.0, 1.0)) if den > 0 else 0.0
        return lam

    def _fit_scale(self, X, Y, fold, folds, pen, alphas, scale):
        """Models of one parameter's visits on one outcome scale: intercepts and slopes per fold
        (+ full), out-of-fold residuals, bounds of the mean, and the out-of-fold squared error
        of the mean on the raw scale (log scale: smearing estimate exp(mu) x mean exp(r))."""
        n, J = Y.shape
        F = X.shape[1]
        Yt = forward(Y, scale)
        b0 = np.zeros((folds + 1, J))
        beta = np.zeros((folds + 1, J, F))
        for f in range(folds + 1):
            rows = fold != f if f < folds else np.ones(n, dtype=bool)
            b0[f], beta[f] = _fit_parameter(X[rows], Yt[rows], pen, alphas, self.pool_visits)
        with np.errstate(all="ignore"):
            ymin, ymax = np.nanmin(Yt, axis=0), np.nanmax(Yt, axis=0)
        span = np.where(np.isfinite(ymax - ymin), ymax - ymin, 0.0)
        lo, hi = ymin - 0.25 * span, ymax + 0.25 * span     # the mean stays near observed values
        pred = np.full((n, J), np.nan)
        for f in range(folds):
            rows = fold == f
            pred[rows] = np.clip(b0[f] + X[rows] @ beta[f].T, lo, hi)
        resid = Yt - pred
        if scale == "identity":
            raw = pred
        else:
            with np.errstate(all="ignore"):
                smear = np.nanmean(np.exp(resid), axis=0)
            smear = np.where(np.isfinite(smear), smear, 1.0)
            raw = np.exp(pred) * smear - (1.0 if scale == "log1p" else 0.0)
        err = float(np.nansum((raw - Y) ** 2))
        if scale == "identity":
            # a raw-scale model of a positive, skewed parameter can push many twins below the
            # smallest plausible value (they would pile up at the clip bound): penalise it
            vals = Y[np.isfinite(Y)]
            if len(vals) and vals.min() > 0:
                floor = max(vals.min() - self.clip_margin * np.ptp(vals), vals.min() / 2)
                below = []
                for j in range(J):
                    r = np.sort(resid[np.isfinite(resid[:, j]), j])
                    p_ = pred[np.isfinite(pred[:, j]), j]
                    if len(r) and len(p_):
                        below.append(np.searchsorted(r, floor - p_).mean() / len(r))
                if below and float(np.mean(below)) > _MAX_CLIPPED:
                    err = np.inf
        return b0, beta, resid, lo, hi, err

    def _fit_arm(self, arm: str) -> _ArmModel:
        kb = self.knowledge_base
        ids = kb.subjects.loc[kb.subjects["ARM"] == arm, "USUBJID"].to_numpy(dtype=object)
        n = len(ids)
        folds = min(self.cv_folds, max(n, 2))
        order = np.argsort([stable_key(f"fold|{u}") for u in ids], kind="stable")
        fold = np.empty(n, dtype=int)
        fold[order] = np.arange(n) % folds

        vv = kb.visit_values[kb.visit_values["ARM"] == arm]
        params = list(kb.parameters)
        # transforms from the target arm's values (baseline + visits)
        transforms = {}
        base_long = kb.baseline_long[kb.baseline_long["USUBJID"].isin(set(ids))]
        for p in params:
            vals = np.concatenate([base_long.loc[base_long["PARAMCD"] == p, "AVAL"].to_numpy(float),
                                   vv.loc[vv["PARAMCD"] == p, "AVAL"].to_numpy(float)])
            transforms[p] = choose_transform(vals) if self.transform != "none" else "identity"

        outcomes: list[_Outcome] = []
        for p in kb.longitudinal_parameters:
            sched = {v.avisitn: v for v in kb.schedule(p)}
            counts = vv[vv["PARAMCD"] == p].groupby("AVISITN")["USUBJID"].nunique()
            for avisitn, cnt in counts.items():
                if cnt >= self.min_visit_subjects and avisitn in sched:
                    v = sched[avisitn]
                    outcomes.append(_Outcome(p, kb.parameters[p].dataset, float(avisitn), v.avisit, v.ady))
        D = len(outcomes)

        features = BaselineFeatures(params, kb.covariates, transforms).fit(kb, list(ids))
        X = features.transform(kb, list(ids))
        F = X.shape[1]
        pos = {u: i for i, u in enumerate(ids)}
        Y = np.full((n, D), np.nan)
        col_of = {(o.paramcd, o.avisitn): j for j, o in enumerate(outcomes)}
        if D:
            r = vv["USUBJID"].map(pos).to_numpy()
            c = np.array([col_of.get((p, a), -1) for p, a in zip(vv["PARAMCD"], vv["AVISITN"])], dtype=int)
            keep = c >= 0
            Y[r[keep].astype(int), c[keep]] = vv["AVAL"].to_numpy(float)[keep]

        # ridge per parameter and fold: slopes shared by the visits of a parameter (stacked,
        # visit-centred), then per-visit deviations of the own-baseline slope; visit intercepts
        # are free. A skewed parameter is modelled on the scale (log or raw) whose out-of-fold
        # predictions are more accurate on the raw scale (`transform="auto"`).
        b0 = np.zeros((folds + 1, D))
        beta = np.zeros((folds + 1, D, F))
        resid = np.full((n, D), np.nan)
        mlo, mhi = np.zeros(D), np.zeros(D)
        out_transforms = {}
        alphas = _ALPHAS if self.alpha is None else np.array([float(self.alpha)])
        for p in dict.fromkeys(o.paramcd for o in outcomes):
            cols = [j for j, o in enumerate(outcomes) if o.paramcd == p]
            pen = np.ones(F)
            own = features.column(p)
            if own is not None:
                pen[own] = _OWN_PENALTY
            scales = ["identity"] if transforms[p] == "identity" or self.transform == "features" \
                else ([transforms[p]] if self.transform == "log" else [transforms[p], "identity"])
            best = None
            for scale in scales:
                fitted = self._fit_scale(X, Y[:, cols], fold, folds, pen, alphas, scale)
                if best is None or fitted[-1] < best[-1][-1]:
                    best = (scale, fitted)
            scale, (p_b0, p_beta, p_resid, p_lo, p_hi, _) = best
            b0[:, cols], beta[:, cols], resid[:, cols] = p_b0, p_beta, p_resid
            mlo[cols], mhi[cols] = p_lo, p_hi
            out_transforms[p] = scale
        transforms = {p: out_transforms.get(p, t) for p, t in transforms.items()}

        # residual covariance per fold (pairwise complete, shrunk towards its diagonal, made
        # positive definite): completes donors' missed visits and drives the smoothing noise
        sigma = np.zeros((folds + 1, D, D))
        sigma_root = np.zeros((folds + 1, D, D))
        for f in range(folds + 1):
            rows = fold != f if f < folds else np.ones(n, dtype=bool)
            sigma[f] = _covariance(resid[rows])
            wv, V = np.linalg.eigh(sigma[f])
            sigma_root[f] = V * np.sqrt(np.clip(wv, 0, None))

        # clip bounds per fold (values of the other folds) and for the full arm
        lo = np.full((folds + 1, D), -np.inf)
        hi = np.full((folds + 1, D), np.inf)
        base_wide = kb.baseline.reindex(index=ids)
        allvals = kb.visit_values
        integer = np.zeros(D, dtype=bool)
        for j, o in enumerate(outcomes):
            pv = np.column_stack([Y[:, col_of[(o.paramcd, oo.avisitn)]] for oo in outcomes
                                  if oo.paramcd == o.paramcd])
            b = base_wide[o.paramcd].to_numpy(float) if o.paramcd in base_wide else np.full(n, np.nan)
            subject_vals = np.column_stack([pv, b])
            for f in range(folds + 1):
                rows = fold != f if f < folds else np.ones(n, dtype=bool)
                v = subject_vals[rows]
                v = v[np.isfinite(v)]
                if len(v):
                    lo_, hi_ = v.min(), v.max()
                    margin = self.clip_margin * (hi_ - lo_)
                    # positive parameters stay positive (at least half the smallest value seen)
                    lo[f, j] = max(lo_ - margin, lo_ / 2) if lo_ > 0 else (0.0 if lo_ == 0 else lo_ - margin)
                    hi[f, j] = hi_ + margin
            # whole numbers at every post-baseline visit (a baseline may be an average)
            every = allvals.loc[allvals["PARAMCD"] == o.paramcd, "AVAL"].to_numpy(float)
            integer[j] = len(every) > 0 and bool(np.all(np.abs(every - np.round(every)) < 1e-9))

        tte = {}
        tte_beta = {}
        tte_primary = ""
        tte_integer = True
        if kb.tte is not None:
            arm_tte = kb.tte[kb.tte["USUBJID"].isin(pos)]
            for q in kb.tte_parameters:
                g = arm_tte[arm_tte["PARAMCD"] == q]
                t = np.full(n, np.nan)
                c = np.ones(n)
                rows = g["USUBJID"].map(pos).to_numpy(int)
                t[rows] = g["AVAL"].to_numpy(float)
                c[rows] = g["CNSR"].to_numpy(float)
                tte[q] = (t, c)
                has = np.isfinite(t)
                betas = np.zeros((folds + 1, F))
                if self.tte_space == "prognostic":
                    for f in range(folds + 1):
                        rows = has & ((fold != f) if f < folds else True)
                        betas[f] = cox_ridge(X[rows], t[rows], c[rows] == 0, self.cox_penalizer)
                tte_beta[q] = betas
            events = {q: int(((c == 0) & np.isfinite(t)).sum()) for q, (t, c) in tte.items()}
            tte_primary = max(events, key=lambda q: (events[q], -list(events).index(q))) if events else ""
            vals = kb.tte["AVAL"].to_numpy(float)
            tte_integer = bool(np.all(np.abs(vals - np.round(vals)) < 1e-9))

        notes = []
        dropped = [(p, a) for p in kb.longitudinal_parameters
                   for a, cnt in vv[vv["PARAMCD"] == p].groupby("AVISITN")["USUBJID"].nunique().items()
                   if cnt < self.min_visit_subjects]
        if dropped:
            notes.append(f"visits with fewer than {self.min_visit_subjects} patients of {arm} are not "
                         "generated: " + ", ".join(f"{p} visit {a:g}" for p, a in dropped[:12])
                         + (" ..." if len(dropped) > 12 else ""))
        return _ArmModel(arm=arm, ids=ids, fold=fold, features=features, outcomes=outcomes,
                         transforms=transforms, b0=b0, beta=beta, resid=resid, sigma=sigma,
                         sigma_root=sigma_root,
                         mean_lo=mlo, mean_hi=mhi,
                         lo=lo, hi=hi, integer=integer, tte=tte, tte_integer=tte_integer, notes=notes,
                         X=X, tte_beta=tte_beta, tte_primary=tte_primary)

    # ---------------------------------------------------------------------------------------
    def generate(self, sources: Trial, target_arm: str, twins_per_patient: int = 1, seed: int = 0,
                 progress: ProgressFn | None = None, cancel: CancelLike = None) -> TwinRun:
        t_start = time.perf_counter()
        kb = self.knowledge_base                # raises when not fitted
        src = prepare_sources(sources)          # baseline only: nothing after baseline is read
        k = check_k(twins_per_patient)
        seed = int(seed)
        model = self.arm_model(target_arm)
        manifest = base_manifest(self, kb, sources, target_arm, k, seed)
        retr = self.retriever
        k_ret = max(self.neighbors, k, self.tte_neighbors if model.tte else 0)
        manifest["retriever"] = {"name": type(retr).__name__, "module": type(retr).__module__,
                                 "space": getattr(retr, "space", None), "k": k_ret}
        manifest["notes"] = list(model.notes)
        manifest["model_details"] = {"outcomes": len(model.outcomes), "features": len(model.features.columns),
                             "cv_folds": int(model.b0.shape[0] - 1),
                             "transforms": {p: t for p, t in model.transforms.items() if t != "identity"},
                             "center_lambda": {} if model.lam is None else {
                                 o.paramcd: round(float(v), 3) for o, v in zip(model.outcomes, model.lam)},
                             "tte_primary": model.tte_primary or None}

        ids = list(src.subjects["USUBJID"])
        total = len(ids)
        missing_base = [p for p in dict.fromkeys(o.paramcd for o in model.outcomes)
                        if p not in src.baseline.columns or src.baseline[p].isna().any()]
        for p in missing_base:
            n_miss = int(src.baseline[p].isna().sum()) if p in src.baseline.columns else total
            manifest["notes"].append(f"{n_miss} source(s) have no baseline {p}: their twins use the "
                                     f"arm's typical baseline for it")
        if len(model.ids) == 0:
            raise GeneratorError(f"the target arm '{target_arm}' has no patients in the knowledge base")

        pieces = []
        done = 0
        cancelled = False
        t_gen = time.perf_counter()
        for start in range(0, total, self.chunk_size):
            if is_cancelled(cancel):
                cancelled = True
                break
            chunk = ids[start:start + self.chunk_size]
            with threadpool_limits(1):
                pieces.append(self._generate_chunk(src, chunk, model, k, seed, k_ret, manifest))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        gen_seconds = time.perf_counter() - t_gen
        done_ids = ids[:done]

        covs = [c for c in src.subjects.columns if c in kb.covariates or c in src.covariates]
        adsl = twin_adsl(src, done_ids, k, target_arm, covs)
        failed = {(f["source"], f["twin_index"]) for f in manifest["failures"]}
        if failed:
            adsl = adsl[[(s, int(i)) not in failed for s, i in zip(adsl["SRCSUBJID"], adsl["TWINIDX"])]]
            adsl = adsl.reset_index(drop=True)

        labels = manifest["trial"]["labels"]
        datasets = {}
        for p, info in kb.parameters.items():
            datasets.setdefault(info.dataset, []).append(p)
        ok_ids = [s for s in done_ids if not all((s, i) in failed for i in range(1, k + 1))]
        base = baseline_records(src, ok_ids, k, datasets, labels)
        if failed:
            for name, frame in base.items():
                if len(frame):
                    keep = [(s, int(i)) not in failed for s, i in zip(frame["SRCSUBJID"], frame["_TW"])]
                    base[name] = frame[keep]
        generated: dict[str, list[pd.DataFrame]] = {}
        tte_parts = []
        for piece in pieces:
            for name, frame in piece["bds"].items():
                generated.setdefault(name, []).append(frame)
            if piece["tte"] is not None:
                tte_parts.append(piece["tte"])
        order = {s: i for i, s in enumerate(done_ids)}
        gen = {}
        for name, frames in generated.items():
            g = pd.concat(frames, ignore_index=True)
            g["_SRC"] = g["SRCSUBJID"].map(order)
            g["PARAM"] = g["PARAMCD"].map(labels).fillna(g["PARAMCD"])
            g["ABLFL"] = ""
            gen[name] = g
        bds = assemble_bds(base, gen, done_ids)
        for name in kb.bds:
            bds.setdefault(name, pd.DataFrame(columns=["USUBJID", "SRCSUBJID", "PARAMCD", "PARAM", "AVAL",
                                                       "ADY", "AVISITN", "AVISIT", "ABLFL"]))
        bds = {name: bds[name] for name in kb.bds}
        tte = None
        if kb.tte is not None:
            cols = ["USUBJID", "SRCSUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR"]
            tte = pd.concat(tte_parts, ignore_index=True) if tte_parts else pd.DataFrame(columns=cols)
            tte["PARAM"] = tte["PARAMCD"].map(labels).fillna(tte["PARAMCD"])
            tte = tte[cols]
            if self.truncate_at_followup:
                bds, dropped = truncate_at_followup(bds, tte)
                manifest["notes"].append(
                    f"{dropped} generated records after their twin's end of follow-up (death, transplant "
                    "or censoring in the twin's event history) were left out, as real patients have none")

        manifest["cancelled"] = cancelled
        if cancelled:
            manifest["notes"].append(f"cancelled after {done} of {total} sources; their twins are kept")
        manifest["counts"] = {
            "sources": len(ok_ids), "sources_requested": int(total), "twins": len(adsl),
            "records": {name: len(f) for name, f in bds.items()},
            "generated_records": {name: int((f["ABLFL"] != "Y").sum()) for name, f in bds.items()},
            "tte_records": 0 if tte is None else len(tte),
            "failures": len(manifest["failures"]),
        }
        total_s = time.perf_counter() - t_start
        manifest["timings"] = {"fit_s": round(self._fit_seconds, 4), "generate_s": round(gen_seconds, 4),
                               "total_s": round(total_s, 4),
                               "twins_per_s": round(len(adsl) / gen_seconds, 1) if gen_seconds > 0 else None}
        manifest["created"] = utc_now()
        manifest["run_id"] = new_run_id(self.name, kb.content_hash, manifest["sources"]["ids_hash"],
                                        target_arm, k, seed)
        return TwinRun(adsl=adsl, bds=bds, tte=tte, manifest=manifest)

    # ---------------------------------------------------------------------------------------
    def _neighbours(self, src: Trial, chunk: list[str], model: _ArmModel, k_ret: int):
        """(S, k_ret) arm-row indices of each source's neighbours (-1 = none) and distances."""
        hits = self.retriever.neighbours_many(src.subset(chunk), model.arm, k_ret + 1)
        index = model.index
        idx = np.full((len(chunk), k_ret), -1, dtype=int)
        dist = np.full((len(chunk), k_ret), np.nan)
        for i, s in enumerate(chunk):
            row = [(index[h.usubjid], float(h.distance)) for h in hits.get(s, [])
                   if h.usubjid != s and h.usubjid in index][:k_ret]
            for j, (r, d) in enumerate(row):
                idx[i, j] = r
                dist[i, j] = d
        return idx, dist

    def _generate_chunk(self, src: Trial, chunk: list[str], model: _ArmModel, k: int, seed: int,
                        k_ret: int, manifest: dict) -> dict:
        D = len(model.outcomes)
        keys = np.array([stable_key(s) for s in chunk], dtype=np.uint64)
        nb_idx, nb_dist = self._neighbours(src, chunk, model, k_ret)
        index = model.index
        self_row = np.array([index.get(s, -1) for s in chunk])

        def weights(m: int) -> np.ndarray:
            return self._weights(nb_dist[:, :m], nb_idx[:, :m] >= 0)

        m = min(max(self.neighbors, k), k_ret)
        nbr = nb_idx[:, :m]
        w = weights(m)

        # record neighbours / donors in the manifest: the `neighbors` nearest (when K is larger
        # the donors of the later twins come from further out; `donors` names each twin's)
        ids = model.ids
        for i, s in enumerate(chunk):
            nb_ids = [str(ids[r]) for r in nbr[i, :self.neighbors] if r >= 0]
            for t in range(1, k + 1):
                manifest["neighbours"][twin_id(s, t)] = nb_ids

        bds_out: dict[str, pd.DataFrame] = {}
        if D:
            # prognostic mean: fold model for sources of the target arm, full model otherwise
            X = model.features.transform(src, chunk)
            folds = model.b0.shape[0] - 1
            which = np.where(self_row >= 0, model.fold[np.maximum(self_row, 0)], folds)
            mu = model.b0[which] + np.einsum("sf,sdf->sd", X, model.beta[which])   # (S, D)
            mu = np.clip(mu, model.mean_lo, model.mean_hi)

            # donors: one weighted random order of the neighbours per source (Efraimidis-
            # Spirakis); twin t takes the donor at position t-1, so a source's twins have
            # distinct donors while K <= m (m grows to K when the arm allows)
            u = uniforms(seed, keys, 1, _S_DONOR, m)[:, 0, :]                  # (S, m)
            with np.errstate(divide="ignore"):
                key = np.where(w > 0, -np.log(u) / np.where(w > 0, w, 1.0), np.inf)
            perm = np.take_along_axis(nbr, np.argsort(key, axis=1, kind="stable"), axis=1)
            m_valid = (w > 0).sum(axis=1)                                      # (S,)
            slot = np.arange(k)[None, :] % np.maximum(m_valid, 1)[:, None]      # (S, k)
            donor = np.take_along_axis(perm, slot, axis=1)
            donor = np.where(m_valid[:, None] > 0, donor, -1)                   # (S, k)
            comp = self._completed(model, np.unique(which), seed)               # (folds+1, n, D)
            res = np.where(donor[..., None] >= 0, comp[which[:, None], np.maximum(donor, 0)], 0.0)
            if self.fill == "observed":
                # at each visit: the first donor from the twin's slot on (cyclic order) who was
                # seen at that visit; the completed residual only when no neighbour was
                obs = np.where(perm[..., None] >= 0, np.isfinite(model.resid[np.maximum(perm, 0)]), False)
                obs &= (np.arange(m) < m_valid[:, None])[..., None]              # (S, m, D)
                pos2 = np.where(np.concatenate([obs, obs], axis=1), np.arange(2 * m)[None, :, None], 2 * m)
                nxt = np.minimum.accumulate(pos2[:, ::-1, :], axis=1)[:, ::-1, :][:, :m, :]   # (S, m, D)
                at = np.take_along_axis(nxt, slot[:, :, None], axis=1)           # (S, k, D)
                found = at < 2 * m
                pick = np.take_along_axis(perm, np.where(found, at % max(m, 1), 0).reshape(len(chunk), -1),
                                          axis=1).reshape(at.shape)
                seen = model.resid[np.maximum(pick, 0), np.arange(D)[None, None, :]]
                res = np.where(found, seen, res)
            if model.lam is not None:
                # re-centre the neighbourhood's residuals on a shrunken neighbourhood mean: the
                # twins' mean then carries only the informative part of the neighbours' mean
                # (lam), not its sampling noise; the factor keeps the variance
                if self.fill == "observed":
                    rbar, neff_d = _neighbourhood_mean(model.resid, nbr, w)       # per visit
                else:
                    Rn = np.where(nbr[..., None] >= 0, comp[which[:, None], np.maximum(nbr, 0)], np.nan)
                    wn = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
                    rbar = np.einsum("sm,smd->sd", wn, np.nan_to_num(Rn))
                    neff_d = np.repeat((1.0 / np.maximum((wn ** 2).sum(axis=1), 1e-12))[:, None], D, axis=1)
                factor = np.sqrt(neff_d / np.maximum(neff_d - 1, 1e-9))[:, None, :]
                centred = (res - rbar[:, None, :]) * factor + model.lam[None, None, :] * rbar[:, None, :]
                ok = (neff_d >= 3)[:, None, :] & (donor >= 0)[..., None]
                if self.fill == "observed":
                    ok &= found
                res = np.where(ok, centred, res)
            for i, s in enumerate(chunk):
                for t in range(k):
                    r = donor[i, t]
                    manifest["donors"][twin_id(s, t + 1)] = str(ids[r]) if r >= 0 else None
            # smoothed bootstrap: shrink the borrowed residual and add Gaussian noise with the
            # arm's residual covariance (same variance and correlations); always (h >= 0.5)
            # for a twin whose donor repeats one of its source's earlier twins (K > m)
            repeat = np.arange(k)[None, :] >= np.maximum(m_valid, 1)[:, None]
            h = np.where(repeat | (donor < 0), max(self.smoothing, 0.5), self.smoothing)
            h = np.where(donor < 0, 1.0, h)                       # no donor at all: pure noise
            if (h > 0).any():
                z = ndtri(uniforms(seed, keys, k, _S_NOISE, D))
                noise = np.einsum("skd,ed->ske", z, model.sigma_root[-1])
                res = np.sqrt(1 - h * h)[..., None] * res + h[..., None] * noise
            values = mu[:, None, :] + res                                       # (S, k, D)
            keep = np.isfinite(values)
            if self.visits == "neighbour":
                keep &= np.where(donor[..., None] >= 0, np.isfinite(model.resid[np.maximum(donor, 0)]),
                                 False)
            lo = model.lo[which][:, None, :]
            hi = model.hi[which][:, None, :]
            for j, o in enumerate(model.outcomes):
                values[:, :, j] = inverse(values[:, :, j], model.transforms[o.paramcd])
            values = np.clip(values, lo, hi)
            values = np.where(model.integer[None, None, :], np.round(values), values)

            si, ti, dj = np.nonzero(keep)
            src_arr = np.asarray(chunk, dtype=object)
            out = pd.DataFrame({
                "SRCSUBJID": src_arr[si], "_TW": ti + 1, "_D": dj, "AVAL": values[si, ti, dj],
            })
            out["USUBJID"] = twin_ids(out["SRCSUBJID"].to_numpy(), out["_TW"].to_numpy())
            oc = model.outcomes
            out["PARAMCD"] = np.array([o.paramcd for o in oc], dtype=object)[dj]
            out["AVISITN"] = np.array([o.avisitn for o in oc])[dj]
            out["AVISIT"] = np.array([o.avisit for o in oc], dtype=object)[dj]
            out["ADY"] = np.array([o.ady for o in oc])[dj]
            ds = np.array([o.dataset for o in oc], dtype=object)[dj]
            for name in dict.fromkeys(o.dataset for o in oc):
                bds_out[name] = out[ds == name].drop(columns="_D").reset_index(drop=True)

        tte_out = None
        if model.tte:
            folds = model.b0.shape[0] - 1
            which_t = np.where(self_row >= 0, model.fold[np.maximum(self_row, 0)], folds)
            X_src = model.features.transform(src, chunk)
            if self.tte_draw == "history":
                tte_out = self._tte_history(chunk, keys, model, k, seed, nb_idx, weights(k_ret), X_src,
                                            which_t, self_row, manifest)
            else:
                tte_out = self._tte_chunk(chunk, keys, model, k, seed, nb_idx, weights(k_ret), X_src,
                                          which_t, self_row)
        return {"bds": bds_out, "tte": tte_out}

    def _prognostic_neighbours(self, model: _ArmModel, q: str, X_src: np.ndarray, which: np.ndarray,
                               self_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The `tte_neighbors` patients of the arm (with data for q, never the source) closest
        in the Cox prognostic index of the fold model that excludes the source; Gaussian
        kernel weights on the index difference (bandwidth: the farthest kept)."""
        t_arm = model.tte[q][0]
        beta = model.tte_beta[q]                                     # (folds + 1, F)
        lp_src = np.einsum("sf,sf->s", X_src, beta[which])           # (S,)
        lp_arm = model.X @ beta.T                                   # (n, folds + 1)
        diff = np.abs(lp_arm[:, which].T - lp_src[:, None])          # (S, n)
        bad = ~np.isfinite(t_arm)[None, :] | (np.arange(len(t_arm))[None, :] == self_row[:, None])
        diff = np.where(bad, np.inf, diff)
        m = min(self.tte_neighbors, int(np.isfinite(t_arm).sum()))
        if m == 0:
            return np.full((len(lp_src), 0), -1), np.zeros((len(lp_src), 0))
        order = np.argsort(diff, axis=1, kind="stable")[:, :m]
        d = np.take_along_axis(diff, order, axis=1)
        valid = np.isfinite(d)
        nb = np.where(valid, order, -1)
        return nb, self._weights(np.where(valid, d, np.nan), valid)

    def _tte_history(self, chunk, keys, model: _ArmModel, k: int, seed: int, nb_idx: np.ndarray,
                     w_all: np.ndarray, X_src: np.ndarray, which: np.ndarray, self_row: np.ndarray,
                     manifest: dict) -> pd.DataFrame:
        """Event histories of neighbours: twin t copies the time-to-event records (every event
        type at once, so their joint pattern is kept) of donor t of a weighted random order of
        the source's neighbours in prognosis, times x exp(0.05 z) (one z per twin, capped at the
        neighbourhood's last follow-up)."""
        q0 = model.tte_primary
        if self.tte_space == "prognostic":
            nb, w = self._prognostic_neighbours(model, q0, X_src, which, self_row)
        else:
            m = min(self.tte_neighbors, nb_idx.shape[1])
            nb, w = nb_idx[:, :m], w_all[:, :m]
        S, m = nb.shape
        has_any = np.zeros(len(model.ids), dtype=bool)
        for t_arm, _ in model.tte.values():
            has_any |= np.isfinite(t_arm)
        w = np.where((nb >= 0) & has_any[np.maximum(nb, 0)], w, 0.0)
        u = uniforms(seed, keys, 1, _S_EVENT, max(m, 1))[:, 0, :m]
        with np.errstate(divide="ignore"):
            key = np.where(w > 0, -np.log(u) / np.where(w > 0, w, 1.0), np.inf)
        perm = np.take_along_axis(nb, np.argsort(key, axis=1, kind="stable"), axis=1)
        m_valid = (w > 0).sum(axis=1)
        pos = (np.arange(k)[None, :, None] + np.arange(m)[None, None, :]) % np.maximum(m_valid, 1)[:, None, None]
        order = np.take_along_axis(np.broadcast_to(perm[:, None, :], (S, k, m)), pos, axis=2)
        order = np.where(np.arange(m)[None, None, :] < m_valid[:, None, None], order, -1)   # (S, k, m)
        factor = np.exp(_TIME_JITTER * ndtri(uniforms(seed, keys, k, _S_CENSOR, 1)[:, :, 0]))
        ids = model.ids
        for i, s in enumerate(chunk):
            for t in range(k):
                r = order[i, t, 0] if m else -1
                manifest["tte_donors"][twin_id(s, t + 1)] = str(ids[r]) if r >= 0 else None
        frames = []
        src_arr = np.asarray(chunk, dtype=object)
        for qi, (q, (t_arm, c_arm)) in enumerate(model.tte.items()):
            ok = (order >= 0) & np.isfinite(t_arm[np.maximum(order, 0)])
            first = ok.argmax(axis=2)
            donor = np.take_along_axis(order, first[..., None], axis=2)[..., 0]
            donor = np.where(ok.any(axis=2), donor, -1)                       # (S, k)
            t_nb = np.where((nb >= 0) & (w > 0), t_arm[np.maximum(nb, 0)], np.nan)
            t_max = np.nanmax(np.where(np.isfinite(t_nb), t_nb, -np.inf), axis=1) if m else np.full(S, -np.inf)
            aval = t_arm[np.maximum(donor, 0)] * factor
            aval = np.minimum(aval, np.where(np.isfinite(t_max), t_max, np.inf)[:, None])
            cnsr = c_arm[np.maximum(donor, 0)].astype(int)
            if model.tte_integer:
                aval = np.maximum(np.round(aval), 1.0)
            si, ti = np.nonzero(donor >= 0)
            frames.append(pd.DataFrame({"SRCSUBJID": src_arr[si], "_TW": ti + 1, "PARAMCD": q,
                                        "AVAL": aval[si, ti], "CNSR": cnsr[si, ti], "_Q": qi}))
        return _tte_frame(frames, chunk)

    def _tte_chunk(self, chunk, keys, model: _ArmModel, k: int, seed: int, nb_idx: np.ndarray,
                   w_all: np.ndarray, X_src: np.ndarray, which: np.ndarray, self_row: np.ndarray) -> pd.DataFrame:
        frames = []
        # common random numbers across event types: nested endpoints (death within death or
        # transplant) stay ordered
        u_ev = uniforms(seed, keys, k, _S_EVENT, 1)[:, :, 0]
        u_cn = uniforms(seed, keys, k, _S_CENSOR, 1)[:, :, 0]
        for qi, (q, (t_arm, c_arm)) in enumerate(model.tte.items()):
            if self.tte_space == "prognostic":
                nb, w = self._prognostic_neighbours(model, q, X_src, which, self_row)
                m = nb.shape[1]
            else:
                m = min(self.tte_neighbors, nb_idx.shape[1])
                nb, w = nb_idx[:, :m], w_all[:, :m]
            ok = nb >= 0
            t = np.where(ok, t_arm[np.maximum(nb, 0)], np.nan)
            c = np.where(ok, c_arm[np.maximum(nb, 0)], 1.0)
            w = np.where(ok & np.isfinite(t), w, 0.0)
            t = np.where(w > 0, t, np.inf)
            usable = (w > 0).any(axis=1)
            # sort by time, events before censorings at ties
            srt = np.lexsort((c, t), axis=1)
            t = np.take_along_axis(t, srt, axis=1)
            c = np.take_along_axis(c, srt, axis=1)
            w = np.take_along_axis(w, srt, axis=1)
            at_risk = np.cumsum(w[:, ::-1], axis=1)[:, ::-1]
            frac = np.divide(w, at_risk, out=np.zeros_like(w), where=at_risk > 0)
            ev = (c == 0) & (w > 0)
            cn = (c == 1) & (w > 0)
            surv = np.cumprod(1 - np.where(ev, frac, 0.0), axis=1)
            cens = np.cumprod(1 - np.where(cn, frac, 0.0), axis=1)
            t_fin = np.where(np.isfinite(t), t, np.nan)
            t_max = np.max(np.where(w > 0, np.nan_to_num(t_fin, nan=-np.inf), -np.inf), axis=1) if m \
                else np.full(len(chunk), -np.inf)
            t_max = np.where(np.isfinite(t_max), t_max, np.nan)
            T = _draw(t_fin, surv, ev, u_ev)
            C = _draw(t_fin, cens, cn, u_cn)
            C = np.where(np.isfinite(C), C, t_max[:, None])
            C = np.minimum(C, t_max[:, None])        # jitter never beyond the last follow-up
            aval = np.minimum(T, C)
            cnsr = (T > C).astype(int)
            if model.tte_integer:
                aval = np.maximum(np.ceil(aval), 1.0)
            keep = usable[:, None] & np.isfinite(aval)
            si, ti = np.nonzero(keep)
            src_arr = np.asarray(chunk, dtype=object)
            frame = pd.DataFrame({"SRCSUBJID": src_arr[si], "_TW": ti + 1, "PARAMCD": q,
                                  "AVAL": aval[si, ti], "CNSR": cnsr[si, ti], "_Q": qi})
            frames.append(frame)
        return _tte_frame(frames, chunk)


def _tte_frame(frames: list[pd.DataFrame], chunk: list[str]) -> pd.DataFrame:
    out = pd.concat(frames, ignore_index=True)
    out["USUBJID"] = twin_ids(out["SRCSUBJID"].to_numpy(), out["_TW"].to_numpy())
    order = {s: i for i, s in enumerate(chunk)}
    out = out.iloc[np.lexsort((out["_Q"].to_numpy(), out["_TW"].to_numpy(),
                               out["SRCSUBJID"].map(order).to_numpy()))]
    return out[["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "CNSR"]].reset_index(drop=True)


def _covariance(resid: np.ndarray, shrink: float = 0.1) -> np.ndarray:
    """Covariance of residual vectors: pairwise-complete correlations (residuals winsorised at
    3 robust SDs), shrunk by `shrink` towards the identity and made positive definite, scaled by
    each column's SD. Working on correlations keeps parameters of very different scales
    (platelets in the hundreds, log bilirubin below one) from distorting each other."""
    D = resid.shape[1]
    if D == 0 or len(resid) < 2:
        return np.eye(D) * 1e-6
    sd = np.nanstd(resid, axis=0, ddof=1)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, np.nanmedian(sd) if np.isfinite(sd).any() else 1.0)
    med = np.nanmedian(resid, axis=0)
    mad = np.nanmedian(np.abs(resid - med), axis=0) * 1.4826
    mad = np.where(np.isfinite(mad) & (mad > 0), mad, sd)
    robust = np.clip(resid, med - 3 * mad, med + 3 * mad)
    corr = pd.DataFrame(robust).corr(min_periods=5).to_numpy()
    corr = np.where(np.isfinite(corr), corr, 0.0) * (1 - shrink)
    corr[np.diag_indices(D)] = 1.0
    w, V = np.linalg.eigh(corr)
    corr = (V * np.clip(w, 1e-3, None)) @ V.T
    d = np.sqrt(np.diag(corr))
    corr = corr / d[:, None] / d[None, :]
    return corr * sd[:, None] * sd[None, :]


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """A square root L (L @ L.T = a) of a symmetric positive semi-definite matrix."""
    if a.size == 0:
        return a
    scale = max(float(np.max(np.diag(a))), 1e-12)
    try:
        return np.linalg.cholesky(a + np.eye(len(a)) * 1e-9 * scale)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(a)
        return V * np.sqrt(np.clip(w, 0, None))


def _complete(resid: np.ndarray, sigma: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Fill the NaN entries of each row of `resid` with a draw from N(0, sigma) conditional on
    the row's observed entries (z: standard normal draws, same shape)."""
    out = resid.copy()
    miss = ~np.isfinite(resid)
    if not miss.any():
        return out
    patterns, inverse_idx = np.unique(miss, axis=0, return_inverse=True)
    for pi, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        rows = np.flatnonzero(inverse_idx.reshape(-1) == pi)
        M = np.flatnonzero(pattern)
        O = np.flatnonzero(~pattern)
        S_MM = sigma[np.ix_(M, M)]
        if len(O):
            S_MO = sigma[np.ix_(M, O)]
            S_OO = sigma[np.ix_(O, O)]
            K = np.linalg.solve(S_OO, S_MO.T).T                 # (|M|, |O|)
            mean = resid[np.ix_(rows, O)] @ K.T
            cond = S_MM - K @ S_MO.T
        else:
            mean = np.zeros((len(rows), len(M)))
            cond = S_MM
        root = _sqrt_psd((cond + cond.T) / 2)
        out[np.ix_(rows, M)] = mean + z[np.ix_(rows, M)] @ root.T
    return out


def _neighbourhood_mean(resid: np.ndarray, nbr: np.ndarray, w: np.ndarray):
    """Weighted mean of the neighbours' residuals per visit (S, D) and its effective size."""
    Rn = np.where(nbr[..., None] >= 0, resid[np.maximum(nbr, 0)], np.nan)     # (S, m, D)
    wn = np.where(np.isfinite(Rn), w[:, :, None], 0.0)
    sw = wn.sum(axis=1)
    rbar = np.divide((np.nan_to_num(Rn) * wn).sum(axis=1), sw, out=np.zeros_like(sw), where=sw > 0)
    sw2 = (wn ** 2).sum(axis=1)
    neff = np.divide(sw ** 2, sw2, out=np.zeros_like(sw), where=sw2 > 0)
    return rbar, neff


def _draw(t: np.ndarray, surv: np.ndarray, jump: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-transform draws from step curves `surv` (S, m) at sorted times `t` that drop at
    `jump` positions: the time of the step u falls in, jittered by +-_JITTER/2 of the gap to
    the previous drop (or time 0), using u's position within the step (no extra random
    number). Returns (S, k): inf where u is below the curve's last value (no event)."""
    S, m = surv.shape
    if m == 0:
        return np.full(u.shape, np.inf)
    above = surv[:, None, :] > u[:, :, None]                       # (S, k, m)
    pos = above.sum(axis=2)                                       # first index with surv <= u
    inside = pos < m
    p = np.minimum(pos, m - 1)
    t_hit = np.take_along_axis(np.broadcast_to(t[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    s_hit = np.take_along_axis(np.broadcast_to(surv[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    # previous drop: last jump position before p
    jt = np.where(jump, np.nan_to_num(t, nan=0.0), 0.0)
    prev_t = np.concatenate([np.zeros((S, 1)), np.maximum.accumulate(jt, axis=1)[:, :-1]], axis=1)
    js = np.where(jump, surv, np.nan)
    prev_s = np.concatenate([np.ones((S, 1)), pd.DataFrame(js).ffill(axis=1).fillna(1.0).to_numpy()[:, :-1]],
                            axis=1)
    t0 = np.take_along_axis(np.broadcast_to(prev_t[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    s0 = np.take_along_axis(np.broadcast_to(prev_s[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    span = s0 - s_hit
    frac = np.clip(np.divide(s0 - u, span, out=np.ones_like(u), where=span > 0), 0, 1)
    out = t_hit + (frac - 0.5) * _JITTER * (t_hit - t0)
    return np.where(inside, out, np.inf)
