"""Bootstrap copies of knowledge-base patients (`X#j`) and the cross-fitting folds that keep a
copy with its original: the effects' generator refits resample the knowledge base, and a fold
model must never predict a patient (or a copy of one) it was fitted on."""

from __future__ import annotations

import re

import numpy as np

from services.generation.seeding import stable_key


def kb_folds(kb, folds: int) -> dict[str, int]:
    """Cross-fitting folds of every knowledge-base patient: within each arm, patients in a
    fixed pseudo-random order (by a hash of their id) are dealt to the folds in turn, bootstrap
    copies with their original (`copy_roots`)."""
    out: dict[str, int] = {}
    for _, group in kb.subjects.groupby("ARM", sort=False):
        ids = group["USUBJID"].to_numpy(dtype=object)
        base = np.array(copy_roots(ids), dtype=object)
        uniq = np.array(list(dict.fromkeys(base)), dtype=object)
        order = np.argsort([stable_key(f"fold|{u}") for u in uniq], kind="stable")
        f = np.empty(len(uniq), dtype=int)
        f[order] = np.arange(len(uniq)) % folds
        fold_of = dict(zip(uniq, f.tolist()))
        out.update((u, fold_of[b]) for u, b in zip(ids, base))
    return out


def copy_id(usubjid: str, j: int) -> str:
    """Id of the j-th extra bootstrap copy of a patient (`copy_roots` reads it back)."""
    return f"{usubjid}#{int(j)}"


def copy_ids(draw, taken=()) -> list[str]:
    """Ids of the patients `draw` (drawn with replacement): a patient's first draw keeps its
    id, each further one is a new `copy_id` that is neither in `taken` nor drawn (a knowledge
    base that is itself a bootstrap sample already holds copies `X#j`)."""
    draw = [str(u) for u in draw]
    used = set(map(str, taken)) | set(draw)
    seen: set[str] = set()
    out = []
    for u in draw:
        if u not in seen:
            seen.add(u)
            out.append(u)
            continue
        j = 1
        while copy_id(u, j) in used:
            j += 1
        used.add(copy_id(u, j))
        out.append(copy_id(u, j))
    return out


def copy_groups(ids) -> np.ndarray | None:
    """Each patient's original (`copy_roots`) when some are bootstrap copies of others, else
    None (the fits are then exactly those of distinct patients)."""
    roots = np.array(copy_roots(ids), dtype=object)
    return None if len(set(roots)) == len(roots) else roots


def copy_roots(ids) -> list[str]:
    """The patient each id stands for: a bootstrap copy `X#j` (`copy_id`; of a copy: `X#j#k`)
    stands for X when X is among `ids` or another id is a copy of X too (a resample may hold
    X#1 and X#2 but not X); any other id stands for itself. Copies share their original's
    fold, so a fold's model never predicts a patient it was fitted on. (Distinct patients
    whose ids happen to read `P#1`, `P#2` are then grouped too: one fold, which is harmless.)"""
    ids = [str(u) for u in ids]
    stripped = [re.sub(r"(#\d+)+$", "", u) for u in ids]
    present = set(ids)
    count: dict[str, int] = {}
    for r in stripped:
        count[r] = count.get(r, 0) + 1
    return [r if r != u and (r in present or count[r] > 1) else u for u, r in zip(ids, stripped)]
