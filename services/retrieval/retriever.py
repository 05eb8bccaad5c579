"""Similar-patient retrieval: the k most similar knowledge-base patients of an arm.

    r = Retriever(trial).fit()                      # vectors + Chroma index (idempotent)
    r.neighbours("01-701-1015", arm="Placebo", k=10)  # -> [Neighbour(usubjid, arm, similarity, distance)]
    r.neighbours_many(query_trial, arm="Placebo", k=10)  # {source USUBJID: [Neighbour, ...]}
    r.neighbour_data([n.usubjid for n in ...])      # their ADSL, baseline and trajectories

Rules:
- Similarity is cosine similarity of the patient vectors (`services.retrieval.vectors`), by default in
  the `"baseline"` space (covariates + baseline values): what a query patient offers.
- A source patient is never its own neighbour: its own USUBJID is dropped from its results,
  also when the query patient comes from another trial but carries a USUBJID of the knowledge
  base (same person). `exclude` drops further ids for every query.
- `neighbours_many` sends the whole cohort to the index in one batched query.
- `ExactRetriever` has the same API with exact numpy k-NN (the recall reference).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.retrieval.index import (
    ExactIndex,
    Hit,
    PatientIndex,
    _client_key,
    is_missing_collection,
)
from services.retrieval.vectors import PatientVectorizer, PatientVectors, check_space


@dataclass(frozen=True)
class Neighbour:
    usubjid: str
    arm: str
    similarity: float    # cosine similarity, 1 = identical vector
    distance: float      # 1 - similarity


@dataclass
class NeighbourData:
    """Data of some patients for the UI and the LLM prompt (rows in the order asked).

    - `subjects`: USUBJID, ARM and the baseline covariates (ADSL).
    - `baseline`: wide baseline values, index USUBJID, one column per parameter.
    - `trajectories`: USUBJID, ARM, PARAMCD, AVISITN, AVISIT, ADY, AVAL, BASE, CHG, ABLFL: the
      baseline record (ABLFL "Y", AVISITN 0, AVISIT "Baseline") then every scheduled
      post-baseline visit (`trial.visit_values`).
    - `tte`: time-to-event rows (USUBJID, PARAMCD, AVAL, CNSR) or None.
    """

    subjects: pd.DataFrame
    baseline: pd.DataFrame
    trajectories: pd.DataFrame
    tte: pd.DataFrame | None


def _to_neighbours(hits: list[Hit]) -> list[Neighbour]:
    return [Neighbour(h.usubjid, h.arm, 1.0 - h.distance, h.distance) for h in hits]


class Retriever:
    """Similar patients of a knowledge-base trial, searched on Chroma.

    `vectorizer`: a `PatientVectorizer` (fitted on `trial` by `fit()` if not fitted yet).
    `index`: a `PatientIndex` (default: on `get_client()`) or an `ExactIndex`.
    `space`: `"baseline"` (default; comparable with baseline-only query patients) or `"full"`.
    """

    def __init__(self, trial, vectorizer: PatientVectorizer | None = None, index=None,
                 space: str = "baseline", client=None):
        self.trial = trial
        self.space = check_space(space)
        self.vectorizer = vectorizer or PatientVectorizer()
        self.index = index if index is not None else self._default_index(client)
        self.vectors: PatientVectors | None = None
        self.embeddings: np.ndarray | None = None
        self.build_report = None
        self._lock = threading.Lock()

    def _default_index(self, client):
        return PatientIndex(client=client)

    # ----- building ----------------------------------------------------------------------
    def fit(self) -> Retriever:
        """Vectorise the knowledge base and make sure the index holds it (idempotent)."""
        with self._lock:
            if not getattr(self.vectorizer, "fitted_", False):
                self.vectorizer.fit(self.trial)
            self.vectors = self.vectorizer.transform(self.trial)
            self.embeddings = self.vectors.embed(self.space)
            self._build_index()
        return self

    def _build_index(self) -> None:
        self.build_report = self.index.build(
            self.vectors.ids, self.vectors.arms, self.embeddings, trial_hash=self.trial.content_hash,
            space=self.space, fingerprint=self.vectorizer.fingerprint())

    build = fit

    @property
    def fitted(self) -> bool:
        return self.vectors is not None

    def _ensure(self) -> None:
        if not self.fitted:
            self.fit()

    def info(self) -> dict:
        """What a run manifest should record about the retrieval (JSON-able)."""
        self._ensure()
        report = self.build_report
        return {"retriever": type(self).__name__, "vector_version": self.vectors.version,
                "space": self.space, "dim": int(self.embeddings.shape[1]),
                "fingerprint": self.vectorizer.fingerprint(),
                "index": getattr(self.index, "name", None), "patients": len(self.vectors),
                "store": "numpy (exact)" if isinstance(self.index, ExactIndex) else "chroma",
                "reused_index": bool(report.reused) if report else None}

    def describe(self) -> str:
        if not getattr(self.vectorizer, "fitted_", False):
            self.vectorizer.fit(self.trial)
        return self.vectorizer.describe(self.space)

    # ----- queries -----------------------------------------------------------------------
    def vectors_of(self, query_trial) -> PatientVectors:
        """Vectors of another trial's patients on this knowledge base's scale."""
        self._ensure()
        return self.vectorizer.transform(query_trial)

    def _kb_rows(self, ids) -> np.ndarray:
        try:
            rows = [self.vectors.index_of(str(u)) for u in ids]
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} of the knowledge base '{self.trial.name}'") from None
        return self.embeddings[rows]

    def neighbours(self, query, arm: str | None = None, k: int = 10, exclude=None) -> list[Neighbour]:
        """Neighbours of one patient: a knowledge-base USUBJID, a one-patient `PatientVectors`,
        or an embedding vector of this space."""
        self._ensure()
        if isinstance(query, str):
            Q, self_ids = self._kb_rows([query]), [query]
        elif isinstance(query, PatientVectors):
            if len(query) != 1:
                raise ValueError(f"neighbours() takes one patient; got {len(query)}: use neighbours_many()")
            Q, self_ids = query.embed(self.space), list(query.ids)
        else:
            Q = np.asarray(query, dtype=np.float32)
            if Q.ndim == 2 and Q.shape[0] != 1:
                raise ValueError(f"neighbours() takes one vector; got {Q.shape[0]}: use neighbours_many()")
            Q, self_ids = Q.reshape(1, -1), None
            self._check_dim(Q)
        hits = self._query(Q, k=k, arm=arm, self_ids=self_ids, exclude=exclude)
        return _to_neighbours(hits[0])

    def neighbours_many(self, query, arm: str | None = None, k: int = 10,
                        exclude=None) -> dict[str, list[Neighbour]]:
        """Neighbours of a whole cohort in one batched query: knowledge-base USUBJIDs, a query
        `Trial` (e.g. baseline-only patients of another study) or `PatientVectors`."""
        self._ensure()
        if isinstance(query, PatientVectors):
            ids, Q = list(query.ids), query.embed(self.space)
        elif hasattr(query, "subjects") and hasattr(query, "content_hash"):
            pv = self.vectors_of(query)
            ids, Q = list(pv.ids), pv.embed(self.space)
        else:
            ids = [str(u) for u in query]
            Q = self._kb_rows(ids) if ids else np.zeros((0, self.embeddings.shape[1]), dtype=np.float32)
        if not ids:
            return {}
        hits = self._query(Q, k=k, arm=arm, self_ids=ids, exclude=exclude)
        return {u: _to_neighbours(h) for u, h in zip(ids, hits)}

    def _query(self, Q, **kwargs):
        """`index.query`, rebuilding the collection once if it was deleted under this process
        (`twinarm index prune` from another process, a shared server reset)."""
        try:
            return self.index.query(Q, **kwargs)
        except Exception as exc:
            if not is_missing_collection(exc):
                raise
        with self._lock:
            self._build_index()
        return self.index.query(Q, **kwargs)

    def _check_dim(self, Q: np.ndarray) -> None:
        d = self.embeddings.shape[1]
        if Q.shape[1] != d:
            raise ValueError(f"query vector has {Q.shape[1]} numbers; the '{self.space}' space of "
                             f"this knowledge base has {d}")

    # ----- data of neighbours --------------------------------------------------------------
    def neighbour_data(self, ids) -> NeighbourData:
        """Baseline, covariates, trajectories and time-to-event data of knowledge-base patients."""
        return patient_data(self.trial, ids)


class ExactRetriever(Retriever):
    """Same API as `Retriever`, exact cosine k-NN in numpy (no Chroma)."""

    def __init__(self, trial, vectorizer: PatientVectorizer | None = None, index=None,
                 space: str = "baseline"):
        super().__init__(trial, vectorizer=vectorizer, index=index or ExactIndex(), space=space)

    def _default_index(self, client):
        return ExactIndex()


def patient_data(trial, ids) -> NeighbourData:
    """`NeighbourData` of some patients of `trial` (unknown ids are named in a KeyError)."""
    ids = [str(u) for u in ids]
    subjects = trial.subjects.set_index("USUBJID", drop=False)
    unknown = [u for u in ids if u not in subjects.index]
    if unknown:
        raise KeyError(f"not in trial '{trial.name}': {', '.join(unknown[:5])}"
                       + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    cols = ["USUBJID", "ARM"] + [c for c in trial.covariates if c in subjects.columns]
    subj = subjects.loc[ids, cols].reset_index(drop=True)
    baseline = trial.baseline.reindex(index=ids)

    order = {u: i for i, u in enumerate(ids)}
    arm_of = subjects["ARM"]
    base = trial.baseline_long[trial.baseline_long["USUBJID"].isin(order)]
    base_rows = pd.DataFrame({
        "USUBJID": base["USUBJID"], "PARAMCD": base["PARAMCD"], "AVISITN": 0.0, "AVISIT": "Baseline",
        "ADY": base["ADY"], "AVAL": base["AVAL"], "ABLFL": "Y"})
    vv = trial.visit_values
    post = vv[vv["USUBJID"].isin(order)][["USUBJID", "PARAMCD", "AVISITN", "AVISIT", "ADY", "AVAL"]].copy()
    post["ABLFL"] = ""
    traj = pd.concat([base_rows, post], ignore_index=True)
    bvals = base.set_index(["USUBJID", "PARAMCD"])["AVAL"]
    traj["BASE"] = [bvals.get((u, p), np.nan) for u, p in zip(traj["USUBJID"], traj["PARAMCD"])]
    traj["CHG"] = np.where(traj["ABLFL"].eq("Y"), np.nan, traj["AVAL"] - traj["BASE"])
    traj["ARM"] = traj["USUBJID"].map(arm_of)
    traj["_o"] = traj["USUBJID"].map(order)
    traj = traj.sort_values(["_o", "PARAMCD", "AVISITN"], kind="stable").drop(columns="_o")
    traj = traj[["USUBJID", "ARM", "PARAMCD", "AVISITN", "AVISIT", "ADY", "AVAL", "BASE", "CHG", "ABLFL"]]

    tte = None
    if trial.tte is not None:
        tte = trial.tte[trial.tte["USUBJID"].isin(order)][["USUBJID", "PARAMCD", "AVAL", "CNSR"]].copy()
        tte["_o"] = tte["USUBJID"].map(order)
        tte = tte.sort_values(["_o", "PARAMCD"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return NeighbourData(subj, baseline, traj.reset_index(drop=True), tte)


# ----- one retriever per trial and process (CLI, generators) ---------------------------
_RETRIEVERS: dict[tuple, Retriever] = {}
_RET_LOCK = threading.Lock()


def retriever_for(trial, space: str = "baseline") -> Retriever:
    """A fitted `Retriever` for `trial`, shared within the process (keyed by content hash,
    space and the Chroma settings)."""
    key = (trial.content_hash, check_space(space), _client_key())
    with _RET_LOCK:
        r = _RETRIEVERS.get(key)
        if r is None:
            r = Retriever(trial, space=space).fit()
            if len(_RETRIEVERS) >= 8:
                _RETRIEVERS.pop(next(iter(_RETRIEVERS)))
            _RETRIEVERS[key] = r
        return r
