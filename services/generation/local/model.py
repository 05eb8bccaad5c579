"""Fitting the local generator's model of one target arm (`ArmFitting`, a mixin of
`LocalGenerator`): outcomes, transforms, cross-fitted ridge means and residuals, residual
covariance, clip bounds and the ridge Cox models of the event types."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.generation.local.copies import copy_groups, kb_folds
from services.generation.local.features import BaselineFeatures, choose_transform, forward
from services.generation.local.mean_models import (
    CANDIDATES,
    ancova_models,
    borrow_models,
    carry_models,
    fold_rows,
    out_of_fold,
    ridge_models,
)
from services.generation.local.ridge import _ALPHAS, breslow, cox_ridge, marginal_baseline

_OWN_PENALTY = 1e-4          # relative ridge penalty on the parameter's own baseline
_MAX_CLIPPED = 0.01  # a raw-scale model may clip at most 1% of values at the lower bound


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
    fold_of: dict = field(default_factory=dict)     # fold of every knowledge-base patient
    borrowed: np.ndarray | None = None             # (D,) mean fitted on every arm (`borrow`)
    mean_models: dict = field(default_factory=dict)  # parameter -> chosen mean model
    tte_h0: dict = field(default_factory=dict)     # q -> per fold (event times, H0 fitted to the KM)
    tte_pairs: list = field(default_factory=list)  # `nested_pairs(tte)`: (composite, part, one clock)
    drift: np.ndarray | None = None    # (folds + 1, D) mean residual of a carried-forward baseline, else 0
    raw_own: frozenset = frozenset()   # parameters whose ANCOVA / carry-forward reads the raw baseline

    @property
    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.ids)}


class ArmFitting:
    """The fitting half of `LocalGenerator` (uses its settings)."""

    def _fit_lambda(self, model: _ArmModel) -> np.ndarray | None:
        """How much the neighbourhood's mean residual predicts a patient's own residual: per
        parameter, the least-squares slope (clipped to [0, 1]) of the arm patients' residuals
        on their neighbourhood's mean residual, both measured from a carried-forward baseline's
        drift (the part every patient shares, kept whole: `_carry_drift`). None when centring
        is off."""
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
        nbr, dist = neighbour_rows(hits, ids, model.index, m)
        w = self._weights(dist, nbr >= 0)
        rbar, neff = neighbourhood_mean(model.resid, nbr, w)
        drift = model.drift[-1] if model.drift is not None else np.zeros(D)
        lam = np.zeros(D)
        for p in dict.fromkeys(o.paramcd for o in model.outcomes):
            cols = [j for j, o in enumerate(model.outcomes) if o.paramcd == p]
            r = model.resid[:, cols] - drift[cols]
            b = rbar[:, cols] - drift[cols]
            ok = np.isfinite(r) & (neff[:, cols] >= 3)
            den = float((b[ok] ** 2).sum())
            lam[cols] = float(np.clip((r[ok] * b[ok]).sum() / den, 0.0, 1.0)) if den > 0 else 0.0
        return lam

    def _fit_scale(self, X, Y, fold, folds, pen, alphas, scale, own, carry, borrow, wanted, group=None,
                   modelled=None):
        """Models of one parameter's visits on one outcome scale: the `wanted` candidate mean
        models (`mean_models`; `carry` = (mean, sd) of the own baseline column when it is on this
        scale, `borrow` = (X_all, Y_all, fold_all, arm indicators) of every arm) fitted per
        fold (+ full; `group`: the patient of each row, copies of a bootstrap sample sharing one,
        for the ridges' penalties), and the one with the smallest out-of-fold squared error of the mean on
        the raw scale (log scale: smearing estimate exp(mu) x mean exp(r)). Returns its
        intercepts, slopes, out-of-fold residuals, bounds of the mean, error and name. `own` is
        the column the ANCOVA and carry-forward read; the ridges use the `modelled` columns."""
        J = Y.shape[1]
        X_ridge = X if modelled is None or modelled.all() else X * modelled
        F = X.shape[1]
        Yt = forward(Y, scale)
        with np.errstate(all="ignore"):
            ymin, ymax = np.nanmin(Yt, axis=0), np.nanmax(Yt, axis=0)
        span = np.where(np.isfinite(ymax - ymin), ymax - ymin, 0.0)
        lo, hi = ymin - 0.25 * span, ymax + 0.25 * span     # the mean stays near observed values

        def candidate(name):
            """(b0, beta, resid, lo, hi, error, name) of one candidate, None where it does not apply."""
            if name == "ridge":
                b0, beta = ridge_models(X_ridge, Yt, fold, folds, pen, alphas, self.pool_visits, group)
            elif name == "ancova" and own is not None:
                b0, beta = ancova_models(X, Yt, fold, folds, own)
            elif name == "carry" and own is not None and carry is not None:
                b0, beta = carry_models(J, F, folds, own, *carry)
            elif name == "borrow" and borrow is not None:
                X_all, Y_all, fold_all, arms, group_all = borrow
                b0, beta = borrow_models(X_all, forward(Y_all, scale), fold_all, folds, arms, pen,
                                         alphas, self.pool_visits, group_all)
            else:
                return None
            if name in ("ridge", "borrow") and X_ridge is not X:
                beta[:, :, ~modelled] = 0.0        # exactly (the solver leaves ~1e-18 there)
            pred = out_of_fold(X, b0, beta, fold, folds, lo, hi)
            resid = Yt - pred
            return b0, beta, resid, lo, hi, self._raw_error(Y, pred, resid, scale), name

        fitted = [c for c in map(candidate, wanted) if c is not None]
        # the first with the smallest error; the ridge when no wanted candidate applies (a forced one)
        return min(fitted, key=lambda c: c[5]) if fitted else candidate("ridge")

    def _raw_error(self, Y, pred, resid, scale) -> float:
        """Out-of-fold squared error of the mean on the raw scale; inf for a raw-scale model that
        would put more than 1% of a positive parameter's twins below its plausible floor."""
        J = Y.shape[1]
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
        return err

    def _fit_arm(self, arm: str) -> _ArmModel:
        kb = self.knowledge_base
        ids = kb.subjects.loc[kb.subjects["ARM"] == arm, "USUBJID"].to_numpy(dtype=object)
        n = len(ids)
        folds = min(self.cv_folds, max(n, 2))
        fold_of = kb_folds(kb, folds)          # every patient of the knowledge base, by arm
        fold = np.array([fold_of[u] for u in ids], dtype=int)
        group = copy_groups(ids)               # None unless bootstrap copies repeat patients

        vv = kb.visit_values[kb.visit_values["ARM"] == arm]
        params = list(kb.parameters)
        # transforms from the target arm's values (baseline + visits)
        transforms = {}
        base_long = kb.baseline_long[kb.baseline_long["USUBJID"].isin(set(ids))]
        for p in params:
            vals = np.concatenate([base_long.loc[base_long["PARAMCD"] == p, "AVAL"].to_numpy(float),
                                   vv.loc[vv["PARAMCD"] == p, "AVAL"].to_numpy(float)])
            transforms[p] = choose_transform(vals) if self.transform != "none" else "identity"
            held = (self.structure or {}).get(p, {})
            transforms[p] = held.get("baseline_scale", transforms[p])

        outcomes: list[_Outcome] = []
        for p in kb.longitudinal_parameters:
            sched = {v.avisitn: v for v in kb.schedule(p)}
            counts = vv[vv["PARAMCD"] == p].groupby("AVISITN")["USUBJID"].nunique()
            for avisitn, cnt in counts.items():
                if cnt >= self.min_visit_subjects and avisitn in sched:
                    v = sched[avisitn]
                    outcomes.append(_Outcome(p, kb.parameters[p].dataset, float(avisitn), v.avisit, v.ady))
        D = len(outcomes)

        features = BaselineFeatures(params, kb.covariates, transforms, raw_baselines=True).fit(kb, list(ids))
        X = features.transform(kb, list(ids))
        modelled = features.modelled
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
        others = self._other_arms(kb, arm, features, outcomes, fold_of)
        mean_models: dict[str, str] = {}
        unheld, raw_own = [], set()
        for p in dict.fromkeys(o.paramcd for o in outcomes):
            cols = [j for j, o in enumerate(outcomes) if o.paramcd == p]
            pen = np.ones(F)
            own = features.column(p)
            if own is not None:
                pen[own] = _OWN_PENALTY
            scales = ["identity"] if transforms[p] == "identity" or self.transform == "features" \
                else ([transforms[p]] if self.transform == "log" else [transforms[p], "identity"])
            wanted = CANDIDATES if self.mean_model == "auto" else (self.mean_model,)
            held = (self.structure or {}).get(p, {})
            if "mean_model" in held:      # the structure chosen on another fit: refit, not choose
                scales, wanted = [held["scale"]], (held["mean_model"],)
            best, held_raw = None, held.get("own_baseline") == "raw" if "mean_model" in held else True
            for scale in scales:
                # the ANCOVA and carry-forward read the baseline on the outcome's scale: on the raw scale of a
                # log-modelled parameter its raw baseline, as a statistician fits them (the references themselves)
                raw = features.column(p, raw=True) if scale == "identity" and held_raw else None
                own_s = raw if raw is not None else own
                carry = None
                if own_s is not None and (scale == transforms[p] or raw is not None):
                    carry = (features.mean_[own_s], features.sd_[own_s])
                borrow = None if others is None else (others[0], others[1][:, cols], *others[2:])
                fitted = self._fit_scale(X, Y[:, cols], fold, folds, pen, alphas, scale, own_s, carry, borrow,
                                         wanted, group, modelled)
                if best is None or fitted[5] < best[1][5]:
                    best = (scale, fitted, raw is not None and fitted[6] in ("ancova", "carry"))
            scale, (p_b0, p_beta, p_resid, p_lo, p_hi, _, name), used_raw = best
            if used_raw:
                raw_own.add(p)
            b0[:, cols], beta[:, cols], resid[:, cols] = p_b0, p_beta, p_resid
            mlo[cols], mhi[cols] = p_lo, p_hi
            out_transforms[p] = scale
            mean_models[p] = name
            if "mean_model" in held and name != held["mean_model"]:
                unheld.append(f"{p}: the structure's mean model {held['mean_model']} does not apply "
                              f"to this knowledge base; {name} was fitted instead")
        transforms = {p: out_transforms.get(p, t) for p, t in transforms.items()}
        drift = _carry_drift(resid, fold, folds, [mean_models[o.paramcd] == "carry" for o in outcomes])

        # residual covariance per fold (pairwise complete, shrunk towards its diagonal, made
        # positive definite): completes donors' missed visits and drives the smoothing noise
        sigma = np.zeros((folds + 1, D, D))
        sigma_root = np.zeros((folds + 1, D, D))
        for f, rows in fold_rows(fold, folds):
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
            for f, rows in fold_rows(fold, folds):
                v = subject_vals[rows]
                v = v[np.isfinite(v)]
                if len(v):
                    lo_, hi_ = v.min(), v.max()
                    margin = self.clip_margin * (hi_ - lo_)
                    # a pile at an end (a scale's floor or ceiling) is a bound; positive parameters
                    # stay positive (at least half the smallest value seen)
                    piled = [np.sum(v == e) >= max(3, 0.02 * len(v)) for e in (lo_, hi_)]
                    lo[f, j] = lo_ if piled[0] else max(lo_ - margin, lo_ / 2) if lo_ > 0 else (
                        0.0 if lo_ == 0 else lo_ - margin)
                    hi[f, j] = hi_ if piled[1] else hi_ + margin
            # whole numbers at every post-baseline visit (a baseline may be an average)
            every = allvals.loc[allvals["PARAMCD"] == o.paramcd, "AVAL"].to_numpy(float)
            integer[j] = len(every) > 0 and bool(np.all(np.abs(every - np.round(every)) < 1e-9))

        tte = {}
        tte_beta = {}
        tte_h0 = {}
        tte_primary = ""
        tte_pairs = []
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

            def cox_folds(t, event):
                has = np.isfinite(t)
                betas = np.zeros((folds + 1, F))
                if self.tte_space == "prognostic":
                    for f in range(folds + 1):
                        rows = has & ((fold != f) if f < folds else True)
                        betas[f, modelled] = cox_ridge(X[rows][:, modelled], t[rows], event[rows],
                                                       self.cox_penalizer)
                if self.tte_space == "prognostic":
                    # each model's baseline fitted to the arm's Kaplan-Meier through that model's
                    # index of the arm's patients (`marginal_baseline` says why)
                    h0 = [marginal_baseline(t[has], event[has], X[has] @ betas[f]) for f in range(folds + 1)]
                else:
                    h0 = [breslow(t[r_], event[r_], X[r_] @ betas[f])
                          for f in range(folds + 1) for r_ in [has & ((fold != f) if f < folds else True)]]
                return betas, h0

            for q, (t, c) in tte.items():
                tte_beta[q], tte_h0[q] = cox_folds(t, c == 0)
            # a composite followed on one clock with its part (death or transplant, death censored
            # at a transplant): the other causes get their own cause-specific model, so that twins
            # draw the part and the other causes as competing risks
            tte_pairs = nested_pairs(tte)
            for a, b, one_clock in tte_pairs:
                if one_clock:
                    (ta, ca), (_, cb) = tte[a], tte[b]
                    tte_beta[other_causes(a, b)], tte_h0[other_causes(a, b)] = cox_folds(ta, (ca == 0) & (cb != 0))
            events = {q: int(((c == 0) & np.isfinite(t)).sum()) for q, (t, c) in tte.items()}
            tte_primary = max(events, key=lambda q: (events[q], -list(events).index(q))) if events else ""
            vals = kb.tte["AVAL"].to_numpy(float)
            tte_integer = bool(np.all(np.abs(vals - np.round(vals)) < 1e-9))

        notes = list(unheld)
        dropped = [(p, a) for p in kb.longitudinal_parameters
                   for a, cnt in vv[vv["PARAMCD"] == p].groupby("AVISITN")["USUBJID"].nunique().items()
                   if cnt < self.min_visit_subjects]
        if dropped:
            notes.append(f"visits with fewer than {self.min_visit_subjects} patients of {arm} are not "
                         "generated: " + ", ".join(f"{p} visit {a:g}" for p, a in dropped[:12])
                         + (" ..." if len(dropped) > 12 else ""))
        borrowed = np.array([mean_models.get(o.paramcd) == "borrow" for o in outcomes], dtype=bool)
        return _ArmModel(arm=arm, ids=ids, fold=fold, features=features, outcomes=outcomes,
                         transforms=transforms, b0=b0, beta=beta, resid=resid, sigma=sigma,
                         sigma_root=sigma_root,
                         mean_lo=mlo, mean_hi=mhi,
                         lo=lo, hi=hi, integer=integer, tte=tte, tte_integer=tte_integer, notes=notes,
                         X=X, tte_beta=tte_beta, tte_primary=tte_primary, fold_of=fold_of,
                         borrowed=borrowed, mean_models=mean_models, tte_h0=tte_h0,
                         tte_pairs=tte_pairs, drift=drift, raw_own=frozenset(raw_own))

    def _other_arms(self, kb, arm, features, outcomes, fold_of):
        """(X, Y, fold, arm indicators, patient groups or None) of every patient of the
        knowledge base at the target arm's outcome visits, for the `borrow` candidate; None
        without other arms or when that candidate is not wanted."""
        others = [a for a in kb.arms if a != arm]
        if not outcomes or not others or self.mean_model not in ("auto", "borrow"):
            return None
        all_ids = list(kb.subjects["USUBJID"])
        X_all = features.transform(kb, all_ids) * features.modelled     # the ridge's columns
        pos = {u: i for i, u in enumerate(all_ids)}
        col_of = {(o.paramcd, o.avisitn): j for j, o in enumerate(outcomes)}
        vv = kb.visit_values
        Y_all = np.full((len(all_ids), len(outcomes)), np.nan)
        c = np.array([col_of.get((p, a), -1) for p, a in zip(vv["PARAMCD"], vv["AVISITN"])], dtype=int)
        keep = c >= 0
        Y_all[vv["USUBJID"].map(pos).to_numpy()[keep].astype(int), c[keep]] = vv["AVAL"].to_numpy(float)[keep]
        arm_of = kb.subjects["ARM"].to_numpy(dtype=object)
        indicators = np.column_stack([(arm_of == a).astype(float) for a in others])
        fold_all = np.array([fold_of[u] for u in all_ids], dtype=int)
        return X_all, Y_all, fold_all, indicators, copy_groups(all_ids)


def _carry_drift(resid: np.ndarray, fold: np.ndarray, folds: int, carried: list[bool]) -> np.ndarray | None:
    """(folds + 1, D): per visit, the mean residual of a carried-forward baseline (its mean
    change on the outcome scale: the arm's drift, e.g. the placebo response) over the patients
    outside each fold, then over all; 0 for the other mean models (their intercepts hold the
    visit mean). Cross-fitted like the models, so that a source of the knowledge base never
    gets its own outcomes back through it. The mean is over the patients seen at the visit (as
    every model's fit is), not over the completed residuals. None when nothing is carried."""
    cols = np.flatnonzero(carried)
    if not len(cols):
        return None
    drift = np.zeros((folds + 1, resid.shape[1]))
    with np.errstate(all="ignore"):
        for f, rows in fold_rows(fold, folds):
            drift[f, cols] = np.nan_to_num(np.nanmean(resid[rows][:, cols], axis=0))
    return drift


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


def neighbourhood_mean(resid: np.ndarray, nbr: np.ndarray, w: np.ndarray):
    """Weighted mean of the neighbours' residuals per visit (S, D) and its effective size."""
    Rn = np.where(nbr[..., None] >= 0, resid[np.maximum(nbr, 0)], np.nan)     # (S, m, D)
    wn = np.where(np.isfinite(Rn), w[:, :, None], 0.0)
    sw = wn.sum(axis=1)
    rbar = np.divide((np.nan_to_num(Rn) * wn).sum(axis=1), sw, out=np.zeros_like(sw), where=sw > 0)
    sw2 = (wn ** 2).sum(axis=1)
    neff = np.divide(sw ** 2, sw2, out=np.zeros_like(sw), where=sw2 > 0)
    return rbar, neff


def neighbour_rows(hits: dict, ids: list[str], index: dict[str, int], m: int):
    """(len(ids), m) arm-row indices of each id's retrieved neighbours (-1 = none; the id itself
    and patients outside the arm model are skipped) and their distances (NaN = none)."""
    nbr = np.full((len(ids), m), -1, dtype=int)
    dist = np.full((len(ids), m), np.nan)
    for i, s in enumerate(ids):
        row = [(index[h.usubjid], float(h.distance)) for h in hits.get(s, [])
               if h.usubjid != s and h.usubjid in index][:m]
        for j, (r, d) in enumerate(row):
            nbr[i, j], dist[i, j] = r, d
    return nbr, dist


def other_causes(composite: str, part: str) -> str:
    """Key of the cause-specific model of a composite's events that are not its part."""
    return f"{composite}|not {part}"


def nested_pairs(tte: dict) -> list[tuple[str, str, bool]]:
    """(a, b, one_clock): event type a contains b in every patient of the arm with both (a's
    time <= b's, and b's event is an event of a by then), e.g. death-or-transplant contains
    death; one_clock when their times are equal in every such patient (b censored at a)."""
    pairs = []
    for a, (ta, ca) in tte.items():
        for b, (tb, cb) in tte.items():
            both = np.isfinite(ta) & np.isfinite(tb)
            if a == b or both.sum() < 2 or not ((cb[both] == 0).any()):
                continue
            ta_, tb_, ea, eb = ta[both], tb[both], ca[both] == 0, cb[both] == 0
            if np.all(ta_ <= tb_ + 1e-9) and np.all(~eb | ea) and np.any(ta_ < tb_ - 1e-9) | np.any(ea & ~eb):
                pairs.append((a, b, bool(np.all(np.abs(ta_ - tb_) <= 1e-9))))
    return pairs
