"""Time-to-event twins of the local generator (`EventDrawing`, a mixin of
`LocalGenerator`): draws from each source's own ridge-Cox survival curve (the default,
`_tte_model`), or donors in prognosis (ridge Cox index) and either their whole event
histories or draws from the neighbourhood's weighted Kaplan-Meier curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri

from services.generation.local.model import _ArmModel, other_causes
from services.generation.local.residuals import _S_CENSOR, _S_EVENT
from services.generation.local.ridge import rescale_times
from services.generation.run import twin_id, twin_ids
from services.generation.seeding import uniforms

_JITTER = 1.0      # km and model draws: a step's times spread between the midpoints with its neighbours
_TIME_JITTER = 0.05  # history draws: times x exp(0.05 z)


class EventDrawing:
    """The time-to-event half of `LocalGenerator` (uses its settings and fitted arm models)."""

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
        rescale = self.tte_rescale and q0 in model.tte_h0 and q0 in model.tte_beta
        factor = np.exp(_TIME_JITTER * ndtri(uniforms(seed, keys, k, _S_CENSOR, 1)[:, :, 0]))
        ids = model.ids
        for i, s in enumerate(chunk):
            for t in range(k):
                r = order[i, t, 0] if m else -1
                manifest["tte_donors"][twin_id(s, t + 1)] = str(ids[r]) if r >= 0 else None
        frames = []
        src_arr = np.asarray(chunk, dtype=object)
        if rescale:
            beta0 = model.tte_beta[q0][which]                                 # (S, F)
            lp_src = np.einsum("sf,sf->s", X_src, beta0)
        for qi, (q, (t_arm, c_arm)) in enumerate(model.tte.items()):
            ok = (order >= 0) & np.isfinite(t_arm[np.maximum(order, 0)])
            first = ok.argmax(axis=2)
            donor = np.take_along_axis(order, first[..., None], axis=2)[..., 0]
            donor = np.where(ok.any(axis=2), donor, -1)                       # (S, k)
            t_nb = np.where((nb >= 0) & (w > 0), t_arm[np.maximum(nb, 0)], np.nan)
            t_max = np.nanmax(np.where(np.isfinite(t_nb), t_nb, -np.inf), axis=1) if m else np.full(S, -np.inf)
            t_don = t_arm[np.maximum(donor, 0)]
            if rescale:
                # the donor's history moved to the source's risk (same survival quantile under
                # the fold's Cox model of the primary event type, its baseline fitted to the arm's
                # Kaplan-Meier): twins follow the model's risk
                # order, and the map is monotone, so the history stays coherent
                lp_don = np.einsum("skf,sf->sk", model.X[np.maximum(donor, 0)], beta0)
                ratio = np.exp(np.clip(lp_don - lp_src[:, None], -30, 30))
                for i in range(S):
                    h_t, h_v = model.tte_h0[q0][which[i]]
                    t_don[i] = rescale_times(t_don[i], ratio[i], h_t, h_v)
            aval = t_don * factor
            cap = np.where(np.isfinite(t_max), t_max, np.inf)[:, None]
            cnsr = c_arm[np.maximum(donor, 0)].astype(int)
            if rescale:
                cnsr = np.where(aval > cap, 1, cnsr)       # moved past the follow-up seen: censored
            aval = np.minimum(aval, cap)
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
            T = _draw(t_fin, surv, ev, u_ev, end=t_max)
            C = _draw(t_fin, cens, cn, u_cn, end=t_max, censoring=True)
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

    def _tte_model(self, chunk, keys, model: _ArmModel, k: int, seed: int, X_src: np.ndarray,
                   which: np.ndarray) -> pd.DataFrame:
        """Event times from each source's own survival curve under the fold's ridge Cox model
        (S(t) = exp(-H0(t) exp(lp)), H0 the step curve fitted to the arm's Kaplan-Meier
        (`ridge.marginal_baseline`), inverted at the step and spread
        between the midpoints with its neighbours (`_jittered`); beyond the knowledge base's last
        event: no event), censoring times from the event type's reverse Kaplan-Meier in the arm
        (beyond it: its last follow-up). A source's twins take their (event, censoring, other
        cause) quantiles from Roberts' R3 sequence with a random start (u_t = frac(start + t
        alpha), a randomized quasi-Monte Carlo rotation): each twin's quantiles are uniform,
        twin t is the same whatever K, and any K twins of a source spread over its curve, so
        their Kaplan-Meier follows the model's risk order instead of the luck of K draws. Event
        types share the quantiles. A composite endpoint contains its part (death or
        transplant contains death); when the knowledge base follows both on one clock (death
        censored at a transplant) the part and the composite's other causes are competing
        risks, each from its own cause-specific model: the twin's composite time is the
        earlier, a death when the part comes first."""
        S = len(chunk)
        start = uniforms(seed, keys, 1, _S_EVENT, 3)[:, 0, :]                             # (S, 3)
        steps = np.arange(1, k + 1)[None, :]
        u_ev, u_cn, u_other = (np.mod(start[:, d:d + 1] + steps * _R3[d], 1.0) for d in range(3))
        pairs = model.tte_pairs
        clock_of = {b: a for a, b, one in pairs if one}           # part -> composite, one clock

        def curve(q, u):
            lp = np.exp(np.clip(np.einsum("sf,sf->s", X_src, model.tte_beta[q][which]), -30, 30))
            out = np.full((S, k), np.inf)
            # the last follow-up of the event type (of any, for the other causes of a composite)
            t_q = model.tte[q][0] if q in model.tte else np.concatenate([t for t, _ in model.tte.values()])
            end = float(np.max(t_q[np.isfinite(t_q)])) if np.isfinite(t_q).any() else None
            for i in range(S):
                h_t, h_v = model.tte_h0[q][which[i]]
                out[i] = event_times(-np.log(u[i]) / lp[i], h_t, h_v, end)
            return out

        drawn, ends = {}, {}
        for q, (t_arm, _) in model.tte.items():
            if np.isfinite(t_arm).any() and q in model.tte_beta:
                drawn[q] = curve(q, u_ev)
                t_ref, c_ref = model.tte[clock_of.get(q, q)]
                ok = np.isfinite(t_ref)
                ends[q] = _censoring_times(t_ref[ok], c_ref[ok], u_cn)
        for a, b, one_clock in pairs:
            if a not in drawn or b not in drawn:
                continue
            if one_clock and other_causes(a, b) in model.tte_beta:
                other = curve(other_causes(a, b), u_other)
                drawn[a] = np.minimum(drawn[b], other)
                ends[b] = np.minimum(ends[a], other)           # another cause ends the part's follow-up
            else:
                drawn[a] = np.minimum(drawn[a], drawn[b])
        frames = []
        src_arr = np.asarray(chunk, dtype=object)
        for qi, q in enumerate(model.tte):
            if q not in drawn:
                continue
            T, end = drawn[q], ends[q]
            aval = np.minimum(T, end)
            cnsr = (T > end).astype(int)
            if model.tte_integer:
                aval = np.maximum(np.ceil(aval), 1.0)
            si, ti = np.nonzero(np.isfinite(aval))
            frames.append(pd.DataFrame({"SRCSUBJID": src_arr[si], "_TW": ti + 1, "PARAMCD": q,
                                        "AVAL": aval[si, ti], "CNSR": cnsr[si, ti], "_Q": qi}))
        return _tte_frame(frames, chunk)


_PLASTIC3 = 1.2207440846057596      # x^4 = x + 1: Roberts' R3 sequence, well spread in 3-D
_R3 = tuple(1.0 / _PLASTIC3 ** d for d in (1, 2, 3))


def _jittered(x: np.ndarray, x_prev: np.ndarray, x_next: np.ndarray, frac: np.ndarray,
              end=None, censoring: bool = False) -> np.ndarray:
    """The step's time x spread by frac over [x - _JITTER/2 (x - x_prev), x + _JITTER/2 (x_next -
    x)] (x_prev: the previous step or time 0; past the last step its gap mirrors the previous
    one, up to `end`, the last follow-up: where follow-up ended at that step, e.g. events found
    at a final visit, the half spread past it was censored and half its events lost): with _JITTER 1, from the
    midpoint with the previous step to the midpoint with the next. Neighbouring steps' spreads
    meet without overlapping, so the time rises with the target (a twin's risk order and nested
    endpoints are kept), and integer days rarely fall on the real patients' own days.
    `censoring`: a last step at `end` is not spread at all (spread below it, it would cut the
    follow-up of twins whose events lie at that end); one before it mirrors its previous gap
    (the caller caps it at `end`)."""
    last = ~np.isfinite(x_next)
    below = x - x_prev
    gap = np.full(np.shape(x), np.inf) if end is None else end - x
    room = np.where(np.isfinite(gap), np.clip(2 * gap, 0.0, below), below)    # spread reaches x + room / 2
    above = np.where(last, room, x_next - x)
    if censoring and end is not None:
        below = np.where(last & (x >= end), 0.0, below)
        above = np.where(last & (x < end), below, above)
    return x + _JITTER * (frac * (below + above) / 2 - below / 2)


def _step_inverse(x: np.ndarray, y: np.ndarray, target: np.ndarray, end=None,
                  censoring: bool = False) -> np.ndarray:
    """Inverse of the step function that rises to y[j] at x[j] (y increasing, 0 before x[0]):
    x[j] of the first step reaching `target`, jittered within its neighbourhood (`_jittered`) by
    the target's position within the step; inf beyond the last step."""
    target = np.asarray(target, float)
    pos = np.searchsorted(y, target, side="left")
    inside = pos < len(y)
    p = np.minimum(pos, len(y) - 1)
    x_prev = np.where(p > 0, x[np.maximum(p - 1, 0)], 0.0)
    x_next = np.where(p + 1 < len(x), x[np.minimum(p + 1, len(x) - 1)], np.inf)
    y_prev = np.where(p > 0, y[np.maximum(p - 1, 0)], 0.0)
    span = y[p] - y_prev
    frac = np.clip(np.divide(target - y_prev, span, out=np.full(target.shape, 0.5), where=span > 0), 0, 1)
    return np.where(inside, _jittered(x[p], x_prev, x_next, frac, end, censoring), np.inf)


def event_times(target: np.ndarray, h_times: np.ndarray, h_vals: np.ndarray, end=None) -> np.ndarray:
    """The time at which the baseline cumulative hazard H0 (a step at each event time) reaches
    `target`, jittered within the step (`_step_inverse`); inf where target is beyond H0 at the
    last event time (no event within what was observed)."""
    target = np.asarray(target, float)
    if len(h_times) == 0 or h_vals[-1] <= 0:
        return np.full(target.shape, np.inf)
    return _step_inverse(np.asarray(h_times, float), np.asarray(h_vals, float), target, end)


def _censoring_times(t: np.ndarray, c: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Censoring times drawn from the reverse Kaplan-Meier of (t, censored = c == 1), inverted at
    1 - u (`_step_inverse`, so jittered within the step); beyond the curve's last step, the last
    follow-up (administrative end)."""
    order = np.lexsort((1 - c, t))          # at ties, censorings first: tied events stay at risk
    t, c = t[order], c[order]
    n = len(t)
    surv = np.cumprod(1.0 - (c == 1) / (n - np.arange(n)))
    steps = c == 1
    last = float(t.max())
    if not steps.any():
        return np.full(np.shape(u), last)
    out = _step_inverse(t[steps], 1.0 - surv[steps], 1.0 - np.asarray(u, float), end=last, censoring=True)
    return np.where(np.isfinite(out), np.minimum(out, last), last)


def _tte_frame(frames: list[pd.DataFrame], chunk: list[str]) -> pd.DataFrame:
    if not frames:          # no event type with data in the target arm
        return pd.DataFrame(columns=["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "CNSR"])
    out = pd.concat(frames, ignore_index=True)
    out["USUBJID"] = twin_ids(out["SRCSUBJID"].to_numpy(), out["_TW"].to_numpy())
    order = {s: i for i, s in enumerate(chunk)}
    out = out.iloc[np.lexsort((out["_Q"].to_numpy(), out["_TW"].to_numpy(),
                               out["SRCSUBJID"].map(order).to_numpy()))]
    return out[["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "CNSR"]].reset_index(drop=True)


def _draw(t: np.ndarray, surv: np.ndarray, jump: np.ndarray, u: np.ndarray, end=None,
          censoring: bool = False) -> np.ndarray:
    """Inverse-transform draws from step curves `surv` (S, m) at sorted times `t` that drop at
    `jump` positions: the time of the step u falls in, jittered within its neighbourhood
    (`_jittered`: the gaps to the previous and next drops) by u's position within the step (no
    extra random number). Returns (S, k): inf where u is below the curve's last value (no
    event)."""
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
    # next drop: first jump position after p
    jn = np.where(jump, np.nan_to_num(t, nan=np.inf), np.inf)
    next_t = np.concatenate([np.minimum.accumulate(jn[:, ::-1], axis=1)[:, ::-1][:, 1:],
                             np.full((S, 1), np.inf)], axis=1)
    t0 = np.take_along_axis(np.broadcast_to(prev_t[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    t1 = np.take_along_axis(np.broadcast_to(next_t[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    s0 = np.take_along_axis(np.broadcast_to(prev_s[:, None, :], above.shape), p[..., None], axis=2)[..., 0]
    span = s0 - s_hit
    frac = np.clip(np.divide(s0 - u, span, out=np.ones_like(u), where=span > 0), 0, 1)
    return np.where(inside, _jittered(t_hit, t0, t1, frac, None if end is None else end[:, None], censoring),
                    np.inf)
