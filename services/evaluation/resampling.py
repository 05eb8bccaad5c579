"""Resampled trials: a knowledge base with its target arm drawn with replacement (the
generator refits of `effects`), and the general relabelling of a trial's patients that it and
the inference bench's null designs build on. Copies get ids that `generation.local.copies`
reads back, so a copy shares its original's cross-fitting fold."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.generation.local.copies import copy_ids


def resample_knowledge_base(kb: Trial, arm: str, rng: np.random.Generator,
                            keep: Iterable[str] = ()) -> Trial:
    """The knowledge base with its ``arm`` patients resampled with replacement (same size).

    Patients in ``keep`` (the sources) stay once and are never drawn, so a source cannot meet a
    copy of itself; other arms are unchanged. The j-th extra copy of patient X is ``X#j``.
    """
    keep = set(keep)
    subj = kb.subjects
    pool = subj.loc[(subj["ARM"] == arm) & ~subj["USUBJID"].isin(keep), "USUBJID"].to_numpy(object)
    draw = rng.choice(pool, size=pool.size, replace=True)
    others = subj.loc[(subj["ARM"] != arm) | subj["USUBJID"].isin(keep), "USUBJID"].to_numpy(object)
    new = np.array(copy_ids(draw, taken=others), dtype=object)
    return relabelled(kb, np.concatenate([others, draw]), np.concatenate([others, new]),
                      f"{kb.name} (bootstrap)", salt="boot")


def subsample_knowledge_base(kb: Trial, arm: str, rng: np.random.Generator, keep: Iterable[str] = (),
                             fraction: float = 0.5) -> tuple[Trial, int, int]:
    """The knowledge base with round(``fraction`` x n) of its n ``arm`` patients drawn *without*
    replacement (delete-d jackknife, Shao & Wu 1989): no patient is drawn twice, so neither a
    donor nor a fitted choice meets copies (unless the knowledge base holds copies already).
    Patients in ``keep`` stay; other arms unchanged. Returns (trial, r kept, d deleted): the
    variance of a statistic is (r / d) x the variance of its subsample values."""
    if not 0 < fraction < 1:
        raise ValueError(f"the subsample fraction must be between 0 and 1, got {fraction}")
    keep = set(keep)
    subj = kb.subjects
    pool = subj.loc[(subj["ARM"] == arm) & ~subj["USUBJID"].isin(keep), "USUBJID"].to_numpy(object)
    r = min(max(round(float(fraction) * pool.size), 2), pool.size - 1)
    if r < 2:
        raise ValueError(f"{pool.size} {arm} patients in the knowledge base: too few to subsample")
    draw = rng.choice(pool, size=r, replace=False)
    others = subj.loc[(subj["ARM"] != arm) | subj["USUBJID"].isin(keep), "USUBJID"].to_numpy(object)
    ids = np.concatenate([others, draw])
    return relabelled(kb, ids, ids, f"{kb.name} (subsample)", salt="sub"), r, pool.size - r


def relabelled(trial: Trial, old_ids, new_ids, name: str, salt: str) -> Trial:
    """The trial's patients ``old_ids`` (repeats allowed) under the ids ``new_ids``, every
    frame's records copied for each; patients not in ``old_ids`` are left out. The content hash
    follows the new ids (``salt`` tells resamples of one trial apart)."""
    mapping = pd.DataFrame({"USUBJID": np.asarray(old_ids, dtype=object),
                            "_NEW": np.asarray(new_ids, dtype=object)})

    def remap(df: pd.DataFrame | None) -> pd.DataFrame | None:
        if df is None:
            return None
        m = df.merge(mapping, on="USUBJID", how="inner", sort=False)
        return m.assign(USUBJID=m["_NEW"]).drop(columns="_NEW").reset_index(drop=True)

    digest = f"{trial.content_hash}|{salt}|{'|'.join(mapping['_NEW'])}"
    return dataclasses.replace(trial, name=name, subjects=remap(trial.subjects),
                               bds={k: remap(v) for k, v in trial.bds.items()}, tte=remap(trial.tte),
                               ae=remap(trial.ae), content_hash=hashlib.sha256(digest.encode()).hexdigest(),
                               warnings=list(trial.warnings), labels=dict(trial.labels))
