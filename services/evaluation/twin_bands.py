"""A patient's K twins read as a predictive distribution: their 10-90 % band and how often the
middle 80 % of that distribution holds the patient's real value (the backtest's calibration,
`services.evaluation.backtest`).

The calibration is a randomized rank PIT: with `a` twins below the real value and `b` tied with
it, the PIT is uniform between the positions of the a-th and (a + b + 1)-th twin, and its
share inside [0.10, 0.90] is the coverage. The positions are what a calibrated generator's
twins would give; the generator says which kind its twins are (manifest `twins_balanced`):

- exchangeable twins (independent draws: the LLM's; `local` at K 1): j / (K + 1), exact whatever
  the distribution, ties included (Hamill 2001; Czado, Gneiting & Held 2009);
- balanced twins (`local`'s default, and an LLM run whose model earned no weight: a source's K
  twins re-centred exactly on the model's mean, their deviations scaled by sqrt(K / (K - 1)) so
  that each twin keeps the predictive variance): they sit closer to their centre than K
  independent draws do, so j / (K + 1) makes a perfect generator read 0.85 at K 5 and 0.82 at
  K 20. Their positions are P(patient < j-th twin) for a calibrated generator whose predictive
  distribution is normal on the model's scale (a seeded simulation, cached per K). That reads
  0.80 at every K for continuous values with normal residuals; it is approximate elsewhere
  (simulated, calibrated twins: t(5) residuals 0.805-0.807; a skewed gamma(2) balanced on its
  own scale 0.78-0.79; a 1-5 score or a 0/1 item rounded after balancing 0.805-0.816, ties
  being split evenly, which is exact only for exchangeable twins).

Not modelled: `local` with `balance=false` is near-balanced too when K twins take every one of
K neighbours (its centring), and reads high on j / (K + 1); `visits="neighbour"` keeps only the
twins whose donor attended a visit (a subset of a balanced set, read as balanced); an LLM run
with a positive weight is read as exchangeable though part of each twin is a local draw, and one
whose model earned no weight as balanced even where a failed reply left fewer than K twins or a
visit kept the model's value.
"""


from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.special import ndtr

BALANCED_MAX_K = 200      # beyond, read as exchangeable: overstates a calibrated reading by ~0.002


@lru_cache(maxsize=64)
def rank_positions(k: int, balanced: bool = False) -> tuple[float, ...]:
    """P(real value < j-th smallest twin), j = 1..k, for a calibrated generator's k twins."""
    k = int(k)
    if not balanced or k < 2 or k > BALANCED_MAX_K:
        return tuple(np.arange(1, k + 1) / (k + 1))
    n = max(20_000, 4_000_000 // k)
    z = np.random.default_rng(20261207).standard_normal((n, k))
    x = np.sort((z - z.mean(axis=1, keepdims=True)) * np.sqrt(k / (k - 1)), axis=1)
    p = ndtr(x).mean(axis=0)
    return tuple((p + 1.0 - p[::-1]) / 2)        # symmetric, as the truth is


def twin_quantiles(tw: pd.DataFrame, keys: list[str], value: str = "AVAL") -> pd.DataFrame:
    """Per group of twins: PREDICTED (mean), Q10, Q90, TWIN_SD, N_TWINS. Percentiles use the
    (n+1)p plotting position (Hyndman-Fan type 6): with n exchangeable twins, a new draw falls
    between them with probability 80%, whatever n (linear interpolation, type 7, gives only
    ~72% for n=20)."""
    tw = tw.sort_values(keys + [value], kind="stable")
    grp = tw.groupby(keys, sort=False)[value]
    size = grp.size()
    out = pd.DataFrame({"PREDICTED": grp.mean(), "TWIN_SD": grp.std(ddof=1), "N_TWINS": size})
    vals = tw[value].to_numpy(float)
    starts = np.concatenate([[0], np.cumsum(size.to_numpy())[:-1]])
    n = size.to_numpy()
    for name, p in (("Q10", 0.10), ("Q90", 0.90)):
        h = np.clip((n + 1) * p, 1, n)          # 1-based position
        lo = np.floor(h).astype(int)
        hi = np.minimum(lo + 1, n)
        frac = h - lo
        out[name] = vals[starts + lo - 1] + frac * (vals[starts + hi - 1] - vals[starts + lo - 1])
    return out.reset_index()


def pit_coverage(tw: pd.DataFrame, obs: pd.DataFrame, keys: list[str], lo: float = 0.10,
                 hi: float = 0.90, balanced: bool = False) -> np.ndarray:
    """Per row of `obs` (keys + OBSERVED): the probability that its randomized rank PIT among
    its twins (`tw`: keys + AVAL) falls in [lo, hi]. With K twins, a below and b tied with the
    observed value, the PIT is uniform between the positions of the a-th and (a + b + 1)-th
    twin (`rank_positions`; 0 and 1 at the ends): exactly uniform on [0, 1] for a calibrated
    generator, so it scores 0.80 on an integer scale too, where the share of values inside the
    10-90% range counts every tie at its ends as inside. `balanced`: the twins are balanced.
    NaN with a single twin: its rank's interval, [0, 1/2] or [1/2, 1], is 80 % inside [lo, hi]
    either way, so it would read 0.80 whatever the twins (`pit_floor` gives the lowest reading
    K twins allow)."""
    m = tw[keys + ["AVAL"]].merge(obs[keys + ["OBSERVED"]], on=keys, how="inner")
    v, y = m["AVAL"].to_numpy(float), m["OBSERVED"].to_numpy(float)
    tol = 1e-9 * np.maximum(1.0, np.abs(y))
    m["_LT"], m["_EQ"] = (v < y - tol).astype(int), (np.abs(v - y) <= tol).astype(int)
    g = m.groupby(keys, sort=False).agg(a=("_LT", "sum"), b=("_EQ", "sum"), k=("AVAL", "size"))
    g = obs[keys].merge(g.reset_index(), on=keys, how="left")
    a, b, k = (g[c].to_numpy(float) for c in ("a", "b", "k"))
    left, right = np.full(len(g), np.nan), np.full(len(g), np.nan)
    for kk in np.unique(k[np.isfinite(k)]).astype(int):
        rows = k == kk
        pos = np.concatenate([[0.0], rank_positions(kk, balanced), [1.0]])
        left[rows] = pos[a[rows].astype(int)]
        right[rows] = pos[(a[rows] + b[rows] + 1).astype(int)]
    inside = np.clip(np.minimum(right, hi) - np.maximum(left, lo), 0.0, None)
    out = inside / (right - left)
    out[k == 1] = np.nan
    return out


def pit_floor(k: int, balanced: bool = False, lo: float = 0.10, hi: float = 0.90) -> float:
    """The lowest coverage reading K twins allow (every real value outside all its twins): with
    few twins the rank PIT cannot resolve the band's ends, e.g. 0.70 at K 2, 0 from K 9 on."""
    if k < 2:
        return float("nan")
    pos = rank_positions(int(k), balanced)
    below = max(0.0, pos[0] - lo) / pos[0]
    above = max(0.0, hi - pos[-1]) / (1 - pos[-1])
    return float(min(below, above))
