"""Residual trajectories of the local generator (`TrajectoryDrawing`, a mixin of
`LocalGenerator`): donors among the retrieved neighbours, completion of their missed visits,
re-centring on the neighbourhood mean, smoothing, and the twins' BDS records."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri

from services.data.trial import Trial
from services.generation.local.features import inverse
from services.generation.local.model import _ArmModel, _sqrt_psd, neighbour_rows, neighbourhood_mean
from services.generation.run import twin_id, twin_ids
from services.generation.seeding import stable_key, uniforms

_S_DONOR, _S_COMPLETE, _S_EVENT, _S_CENSOR, _S_NOISE = 1, 2, 3, 4, 5   # random streams
_S_ROUND = 7          # (6: adverse-event donors)


class TrajectoryDrawing:
    """The longitudinal half of `LocalGenerator` (uses its settings and fitted arm models)."""

    def balances(self, k: int) -> bool:
        """Whether a source's k twins are balanced: re-centred exactly on the model's mean, their
        spread restored (the manifest's `twins_balanced`, read by `evaluation.twin_bands`)."""
        return bool(self.balance and k >= 2)

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
            # a carried-forward baseline's residuals are completed around its drift (their mean)
            drift = model.drift[f] if model.drift is not None else 0.0
            data[f] = complete_residuals(model.resid - drift, model.sigma[f], z) + drift
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

    def _neighbours(self, src: Trial, chunk: list[str], model: _ArmModel, k_ret: int):
        """(S, k_ret) arm-row indices of each source's neighbours (-1 = none) and distances
        (read-only). Retrieval is deterministic, so the fitted generator keeps recent sources'
        (keyed by their content, up to 64 chunks): a refit's independent draws of the same
        sources (`generator_term`) retrieve once."""
        key = (src.content_hash, model.arm, k_ret, tuple(chunk))
        with self._lock:
            found = self._neighbour_cache.get(key)
        if found is None:
            hits = self.retriever.neighbours_many(src.subset(chunk), model.arm, k_ret + 1)
            found = neighbour_rows(hits, chunk, model.index, k_ret)
            for a in found:
                a.setflags(write=False)
            with self._lock:
                if len(self._neighbour_cache) >= 64:
                    self._neighbour_cache.clear()
                self._neighbour_cache[key] = found
        return found

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
            # a source in the knowledge base is predicted by the fold model that excludes it: its
            # arm's fold for the target-arm models, its own fold for models fitted on every arm
            W = np.repeat(which[:, None], D, axis=1)                           # (S, D)
            if model.borrowed is not None and model.borrowed.any():
                own_fold = np.array([model.fold_of.get(s, folds) for s in chunk])
                W[:, model.borrowed] = own_fold[:, None]
            d_idx = np.arange(D)[None, :]
            mu = model.b0[W, d_idx] + np.einsum("sf,sdf->sd", X, model.beta[W, d_idx])   # (S, D)
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
            # a carried-forward baseline's drift (its residuals' mean) is the model's, kept
            # whole; the neighbourhood's shift is its deviation from it (0 elsewhere)
            drift = model.drift[W, d_idx] if model.drift is not None else np.zeros((len(chunk), D))
            if model.lam is not None:
                # re-centre the neighbourhood's residuals on a shrunken neighbourhood mean: the
                # twins' mean then carries only the informative part of the neighbours' mean
                # (lam), not its sampling noise; the factor keeps the variance
                if self.fill == "observed":
                    rbar, neff_d = neighbourhood_mean(model.resid, nbr, w)       # per visit
                else:
                    Rn = np.where(nbr[..., None] >= 0, comp[which[:, None], np.maximum(nbr, 0)], np.nan)
                    wn = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
                    rbar = np.einsum("sm,smd->sd", wn, np.nan_to_num(Rn))
                    neff_d = np.repeat((1.0 / np.maximum((wn ** 2).sum(axis=1), 1e-12))[:, None], D, axis=1)
                factor = np.sqrt(neff_d / np.maximum(neff_d - 1, 1e-9))[:, None, :]
                if self.balances(k) and self.fill != "observed":
                    # the balancing below re-centres on the twins' own mean and restores the donors'
                    # variance itself: the factor on top made every twin n_eff / (n_eff - 1) wider
                    # than its donors' spread (with fill="observed" twins may share a visit's donor
                    # unflagged, which the factor partly covers: kept there)
                    factor = 1.0
                local = drift + model.lam[None, :] * (rbar - drift)                  # (S, D)
                centred = (res - rbar[:, None, :]) * factor + local[:, None, :]
                ok = (neff_d >= 3)[:, None, :] & (donor >= 0)[..., None]
                if self.fill == "observed":
                    ok &= found
                res = np.where(ok, centred, res)
                shift = np.where(ok, local[:, None, :], drift[:, None, :])
            else:
                shift = np.broadcast_to(drift[:, None, :], res.shape)
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
                # around the shift, so that shrinking a residual never shrinks the drift
                res = shift + np.sqrt(1 - h * h)[..., None] * (res - shift) + h[..., None] * noise
            if self.balances(k):
                # the source's K residuals re-centred on the shift (the neighbourhood's
                # informative part and a carried baseline's drift; 0 for other models without
                # centring), spread kept: the twins' mean is the model's prediction plus that
                # shift, with no Monte Carlo noise from which donors were drawn
                # Each twin keeps the donors' variance: twins sharing a donor (K above the
                # neighbourhood) are correlated by a_t a_t' (a = sqrt(1 - h^2)), so the set's
                # expected sum of squares about its mean is sigma^2 (K - S / K) with
                # S = K + sum over t != t' of a_t a_t' [same donor]; the deviations are scaled by
                # sqrt(K / (K - S / K)), sqrt(K / (K - 1)) when every donor differs.
                a = np.where(donor >= 0, np.sqrt(np.clip(1 - h * h, 0.0, None)), 0.0)        # (S, k)
                pair = a[:, :, None] * a[:, None, :] * ((donor[:, :, None] == donor[:, None, :])
                                                        & (donor >= 0)[:, :, None])
                s_sum = k + pair.sum(axis=(1, 2)) - np.einsum("stt->s", pair)
                scale = np.sqrt(k / np.maximum(k - s_sum / k, 1e-9))[:, None, None]
                own_mean = np.nanmean(res, axis=1, keepdims=True)
                balanced = (res - own_mean) * scale + shift.mean(axis=1, keepdims=True)
                res = np.where(np.isfinite(res), balanced, res)
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
            if self.rounding in ("random", "matched"):
                # whole-number parameters: floor + Bernoulli(fraction), so that each twin's
                # expected value is the unrounded one (rounding to the nearest pulls a binary or
                # 1-5 item's twins toward their donors' values and off the model's mean)
                ints = np.clip(values, np.ceil(lo), np.floor(hi))
                if self.rounding == "matched" and model.integer.any():
                    # the twins' predictive distribution: model mean + the neighbourhood's
                    # shift, residual variance of the fold model that predicted the source
                    var_t = model.sigma[W, np.arange(D)[None, :], np.arange(D)[None, :]]   # (S, D)
                    scales = [model.transforms[o.paramcd] for o in model.outcomes]
                    ints = _variance_matched(ints, mu + shift.mean(axis=1), var_t, scales, model.integer,
                                             np.ceil(lo), np.floor(hi))
                up = uniforms(seed, keys, k, _S_ROUND, D) < ints - np.floor(ints)
                values = np.where(model.integer[None, None, :], np.floor(ints) + up, values)
            else:
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
            elif self.tte_draw == "model":
                tte_out = self._tte_model(chunk, keys, model, k, seed, X_src, which_t)
            else:
                tte_out = self._tte_chunk(chunk, keys, model, k, seed, nb_idx, weights(k_ret), X_src,
                                          which_t, self_row)
        return {"bds": bds_out, "tte": tte_out}


def _variance_matched(values: np.ndarray, mean_t: np.ndarray, var_t: np.ndarray, scales: list[str],
                      integer: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Shrink the whole-number parameters' unrounded twin values (S, K, D) towards each source's
    twin mean by c, so that after rounding at random (which adds the variance f(1 - f) of the
    fraction f) their variance is the model's: g(c) = c^2 V + E f_c(1 - f_c) - V = 0, V and E
    over the source's predictive distribution (`mean_t`, `var_t` (S, D) on the outcome scale
    `scales[j]`, by Gauss-Hermite, back-transformed and clipped to [lo, hi] (S, 1, D)); c found
    by bisection (g(1) >= 0; c = 0 when g(0) >= 0: rounding alone gives at least V). A source
    whose range holds only two whole numbers (a 0/1 item) is left as it is: each of its twins
    is Bernoulli of its unrounded value, a variance set by the mean anyway, and shrinking would
    only add Monte-Carlo noise to the twins' mean. The twins' mean is kept (K >= 2; K = 1: the
    twin moves towards the predictive mean). Correlations between visits fall by c_j c_k where
    random rounding alone divides them by about 1 + E f(1 - f) / V."""
    z, wq = np.polynomial.hermite_e.hermegauss(41)
    wq = wq / wq.sum()
    out = values.copy()
    lo2, hi2 = lo[:, 0, :], hi[:, 0, :]                                    # (S, D)
    k = values.shape[1]
    for j in np.flatnonzero(integer):
        many = hi2[:, j] - lo2[:, j] >= 2                                  # (S,) more than 0/1
        if not many.any():
            continue
        sd = np.sqrt(np.maximum(np.nan_to_num(var_t[:, j]), 0.0))
        lat = inverse(mean_t[:, j, None] + sd[:, None] * z[None, :], scales[j])    # (S, Q)
        lat = np.clip(lat, lo2[:, j, None], hi2[:, j, None])
        m = lat @ wq
        dev = lat - m[:, None]
        V = (dev ** 2) @ wq

        def g(c, m=m, dev=dev, V=V):
            x = m[:, None] + c[:, None] * dev
            f = x - np.floor(x)
            return c * c * V + (f * (1 - f)) @ wq - V

        a, b = np.zeros(len(m)), np.ones(len(m))
        for _ in range(30):                                   # g(a) < 0 <= g(b)
            mid = 0.5 * (a + b)
            neg = g(mid) < 0
            a, b = np.where(neg, mid, a), np.where(neg, b, mid)
        c = np.where(g(np.zeros(len(m))) >= 0, 0.0, b)
        c = np.where(many & np.isfinite(V) & (V > 1e-12), c, 1.0)
        v = values[:, :, j]
        seen = np.isfinite(v).sum(axis=1)
        centre = np.nansum(v, axis=1) / np.maximum(seen, 1) if k >= 2 else m
        centre = np.where((seen > 0) & np.isfinite(centre), centre, m)
        shrunk = centre[:, None] + c[:, None] * (v - centre[:, None])
        out[:, :, j] = np.clip(shrunk, lo2[:, j, None], hi2[:, j, None])
    return out


def complete_residuals(resid: np.ndarray, sigma: np.ndarray, z: np.ndarray) -> np.ndarray:
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
            # a pseudo-inverse: a visit whose residuals do not vary in the fold (a 0/1 item all
            # one value there, as in a small arm of MASS::bacteria) makes S_OO singular
            K = S_MO @ np.linalg.pinv(S_OO, hermitian=True)     # (|M|, |O|)
            mean = resid[np.ix_(rows, O)] @ K.T
            cond = S_MM - K @ S_MO.T
        else:
            mean = np.zeros((len(rows), len(M)))
            cond = S_MM
        root = _sqrt_psd((cond + cond.T) / 2)
        out[np.ix_(rows, M)] = mean + z[np.ix_(rows, M)] @ root.T
    return out
