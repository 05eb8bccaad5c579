"""Patient index on Chroma: one collection of patient embeddings per trial, vectors and space.

- Collection name `<version>_<space>_<trial hash[:16]>_<vectorizer fingerprint[:8]>`, e.g.
  `pv1_base_3f2a...`; ids = USUBJID; metadata `arm`; embeddings = our own patient vectors.
  Chroma's embedding functions are never used (`embedding_function=None`, queries by
  embeddings only).
- Cosine space, HNSW parameters in the collection configuration (`DEFAULT_HNSW`).
- Building is idempotent: the collection metadata records the vector version, the vectorizer
  fingerprint, the number of patients and `complete=True` once every patient is in. Reopening
  the same trial finds a complete collection and adds nothing; an interrupted build is
  resumed (only missing ids are added).
- Inserts are batched within `client.get_max_batch_size()`.
- Client: one per process (`get_client()`): embedded `PersistentClient(TWINARM_HOME/chroma)`,
  or `HttpClient(CHROMA_HOST, CHROMA_PORT)` when those are set, so that several app processes
  share one index served by `chroma run --path ... --port ...`. Telemetry is off.

Arm-filtered queries: Chroma evaluates a `where` filter once per query row, which costs about
10 ms per row at 100k patients. For a large cohort the index therefore asks for more
unfiltered neighbours than needed (k / arm share x 1.5) and keeps those of the arm
(post-filtering; the arm of every id is known locally). Rows that still have fewer than k
results are queried again with `where={"arm": arm}`. Small batches and small arms always use
`where`. Both give the same neighbours up to HNSW approximation (see bench/retrieval.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.config import twinarm_home
from services.retrieval.knn import exact_knn
from services.retrieval.vectors import VECTOR_VERSION

DEFAULT_HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 128, "max_neighbors": 16}
SPACE_TAG = {"baseline": "base", "full": "full"}
log = logging.getLogger("twinarm.index")
POST_FILTER_MIN_SHARE = 0.05        # arms smaller than this share always use `where`
POST_FILTER_MIN_WORK = 1_000_000    # rows x patients below which `where` is cheap enough
TOUCH_EVERY_S = 3600                # `last_used` of a reopened collection is refreshed hourly


class PatientIndexError(RuntimeError):
    """The patient index cannot be used (server unreachable, not built, bad settings)."""


# ======================================================================================
# client
# ======================================================================================

_CLIENTS: dict[tuple, object] = {}
_CLIENT_LOCK = threading.Lock()


def _client_key() -> tuple:
    host = os.environ.get("CHROMA_HOST", "").strip()
    port = os.environ.get("CHROMA_PORT", "").strip()
    if host or port:
        try:
            port_n = int(port or 8000)
        except ValueError:
            raise PatientIndexError(f"CHROMA_PORT must be a port number (got '{port}')") from None
        return ("http", host or "localhost", port_n)
    return ("embedded", str(twinarm_home() / "chroma"))


def is_missing_collection(exc: BaseException) -> bool:
    """The error Chroma raises for a collection that does not exist (any client version,
    embedded or server)."""
    return type(exc).__name__ == "NotFoundError" or "does not exist" in str(exc).lower()


def client_description() -> str:
    key = _client_key()
    return f"Chroma server {key[1]}:{key[2]}" if key[0] == "http" else f"embedded Chroma at {key[1]}"


def get_client():
    """The process's Chroma client for the current settings (created once, then cached)."""
    import chromadb
    from chromadb.config import Settings

    key = _client_key()
    with _CLIENT_LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        settings = Settings(anonymized_telemetry=False)
        if key[0] == "http":
            try:
                client = chromadb.HttpClient(host=key[1], port=key[2], settings=settings)
                client.heartbeat()
            except Exception as exc:  # noqa: BLE001 - refused, DNS, TLS, version: one clear message
                raise PatientIndexError(f"cannot reach the Chroma server at {key[1]}:{key[2]} "
                                  f"(CHROMA_HOST/CHROMA_PORT): {exc}") from None
        else:
            path = Path(key[1])
            path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=settings)
        _CLIENTS[key] = client
        return client


def reset_client() -> None:
    """Forget cached clients (tests; after changing TWINARM_HOME or CHROMA_HOST/PORT)."""
    with _CLIENT_LOCK:
        _CLIENTS.clear()


# ======================================================================================
# index
# ======================================================================================

@dataclass(frozen=True)
class Hit:
    usubjid: str
    arm: str
    distance: float      # cosine distance = 1 - cosine similarity


@dataclass(frozen=True)
class BuildReport:
    name: str
    count: int
    added: int
    removed: int
    reused: bool         # True: complete collection found, nothing embedded or added
    seconds: float


def collection_name(trial_hash: str, space: str, fingerprint: str, version: str = VECTOR_VERSION) -> str:
    """Chroma's name of a trial's index. A hash that is not hex (a derived trial's own label)
    is hashed first: Chroma allows only [a-zA-Z0-9._-], and two labels with the same first 16
    characters must not share an index."""
    tag = SPACE_TAG.get(space, "".join(ch for ch in space if ch.isalnum())[:8] or "x")
    if not all(ch in "0123456789abcdef" for ch in trial_hash):
        import hashlib

        trial_hash = hashlib.sha256(trial_hash.encode()).hexdigest()
    return f"{version}_{tag}_{trial_hash[:16]}_{fingerprint[:8]}"


class _IndexBase:
    """What Chroma and exact indexes share: arms per id and the exclusion rules."""

    def __init__(self):
        self.arm_of: dict[str, str] = {}
        self.arm_counts: dict[str, int] = {}
        self.last_build: BuildReport | None = None

    @staticmethod
    def _checked(ids, arms, embeddings, contiguous: bool = True) -> tuple[list[str], list[str], np.ndarray]:
        """ids and arms as text and the embeddings as float32 rows (C-contiguous for Chroma; the
        exact index keeps the caller's layout, which fixes its BLAS rounding), or PatientIndexError."""
        ids = [str(u) for u in ids]
        arms = [str(a) for a in arms]
        E = (np.ascontiguousarray if contiguous else np.asarray)(embeddings, dtype=np.float32)
        if E.ndim != 2 or E.shape[0] != len(ids) or len(arms) != len(ids):
            raise PatientIndexError(f"build: {len(ids)} ids, {len(arms)} arms and embeddings of shape "
                                    f"{E.shape} do not match")
        return ids, arms, E

    def _query_input(self, embeddings, k, exclude):
        """(query rows, ids never to return, k) of a query, once the index is built."""
        self._require_built()
        return self._as_queries(embeddings), set(exclude or ()), int(k)

    def _remember(self, ids: list[str], arms: list[str]) -> None:
        self.arm_of = dict(zip(ids, arms))
        counts: dict[str, int] = {}
        for a in arms:
            counts[a] = counts.get(a, 0) + 1
        self.arm_counts = counts

    def _require_built(self) -> None:
        if self.last_build is None:
            raise PatientIndexError("the patient index is not built: call build() first")

    @staticmethod
    def _as_queries(embeddings) -> np.ndarray:
        Q = np.asarray(embeddings, dtype=np.float32)
        if Q.ndim == 1:
            Q = Q[None, :]
        norms = np.linalg.norm(Q, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(Q)):
            raise PatientIndexError("query vectors must be finite and non-zero")
        return Q / norms

    def _filter_rows(self, rows_ids, rows_dist, k, arm, self_ids, exclude) -> list[list[Hit]]:
        out = []
        for r, (ids, dists) in enumerate(zip(rows_ids, rows_dist)):
            me = self_ids[r] if self_ids is not None else None
            hits = []
            for u, d in zip(ids, dists):
                a = self.arm_of.get(u)
                if u == me or u in exclude or (arm is not None and a != arm):
                    continue
                hits.append(Hit(u, a if a is not None else "", float(d)))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    def _achievable(self, arm, exclude, self_id) -> int:
        pool = self.arm_counts.get(arm, 0) if arm is not None else sum(self.arm_counts.values())
        gone = sum(1 for u in exclude if u in self.arm_of and (arm is None or self.arm_of[u] == arm))
        if self_id is not None and self_id in self.arm_of and self_id not in exclude \
                and (arm is None or self.arm_of[self_id] == arm):
            gone += 1
        return max(0, pool - gone)


class PatientIndex(_IndexBase):
    """Patient embeddings in a Chroma collection (cosine HNSW).

    `PatientIndex(client=None)`: `client` defaults to `get_client()`. One index instance serves
    one collection at a time (the last `build`).
    """

    def __init__(self, client=None, *, hnsw: dict | None = None, filter_strategy: str = "auto"):
        super().__init__()
        if filter_strategy not in ("auto", "where", "post"):
            raise PatientIndexError(f"filter_strategy must be auto, where or post (got '{filter_strategy}')")
        self._client = client
        self.hnsw = {**DEFAULT_HNSW, **(hnsw or {})}
        self.filter_strategy = filter_strategy
        self.collection = None
        self.name: str | None = None

    @property
    def client(self):
        if self._client is None:
            self._client = get_client()
        return self._client

    def _max_batch(self) -> int:
        return max(1, int(self.client.get_max_batch_size()))

    def _open(self, name: str, metadata: dict):
        from chromadb.errors import ChromaError
        try:
            return self.client.get_collection(name, embedding_function=None)
        except ChromaError as exc:
            if not is_missing_collection(exc):
                raise
        try:
            return self.client.create_collection(name, configuration={"hnsw": dict(self.hnsw)},
                                                 metadata=metadata, embedding_function=None)
        except ChromaError:
            # created meanwhile by another process sharing the server
            return self.client.get_collection(name, embedding_function=None)

    def build(self, ids, arms, embeddings, *, name: str | None = None, trial_hash: str = "",
              space: str = "baseline", fingerprint: str = "", version: str = VECTOR_VERSION) -> BuildReport:
        """Put the patients into the collection unless it already holds exactly them."""
        t0 = time.perf_counter()
        ids, arms, E = self._checked(ids, arms, embeddings)
        if len(set(ids)) != len(ids):
            raise PatientIndexError("build: patient ids must be unique")
        if not len(ids):
            raise PatientIndexError("build: no patients to index")
        name = name or collection_name(trial_hash or "custom", space, fingerprint or "0" * 8, version)
        self._remember(ids, arms)
        now = int(time.time())
        meta = {"twinarm": 1, "vector_version": version, "space": space, "trial_hash": trial_hash,
                "fingerprint": fingerprint, "n": len(ids), "dim": int(E.shape[1]),
                "arm_counts": json.dumps(self.arm_counts, sort_keys=True),
                "created": now, "last_used": now}
        col = self._open(name, {**meta, "complete": False})
        self.collection, self.name = col, name
        current = dict(col.metadata or {})
        if (current.get("complete") is True and current.get("fingerprint") == fingerprint
                and current.get("vector_version") == version and col.count() == len(ids)):
            self._touch(current, now)
            self.last_build = BuildReport(name, len(ids), 0, 0, True, time.perf_counter() - t0)
            return self.last_build
        meta["created"] = int(current.get("created") or now)

        batch = self._max_batch()
        existing = set()
        if col.count():
            existing = self._all_ids(col, batch)
        wanted = set(ids)
        extra = sorted(existing - wanted)
        for s in range(0, len(extra), batch):
            col.delete(ids=extra[s:s + batch])
        todo = [i for i, u in enumerate(ids) if u not in existing]
        for s in range(0, len(todo), batch):
            rows = todo[s:s + batch]
            col.add(ids=[ids[i] for i in rows], embeddings=E[rows],
                    metadatas=[{"arm": arms[i]} for i in rows])
        col.modify(metadata={**meta, "complete": True})
        self.last_build = BuildReport(name, len(ids), len(todo), len(extra), False, time.perf_counter() - t0)
        return self.last_build

    def _touch(self, current: dict, now: int) -> None:
        """Record that the collection is in use (for `prune_indexes`), at most hourly."""
        if now - int(current.get("last_used") or 0) < TOUCH_EVERY_S:
            return
        try:
            self.collection.modify(metadata={**current, "last_used": now})
        except Exception as exc:  # noqa: BLE001  (bookkeeping only: the index still serves)
            log.debug("could not record the use of %s: %s", self.name, exc)

    @staticmethod
    def _all_ids(col, batch: int) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            got = col.get(include=[], limit=batch, offset=offset)["ids"]
            out.update(got)
            if len(got) < batch:
                return out
            offset += batch

    def count(self) -> int:
        self._require_built()
        return int(self.collection.count())

    def drop(self) -> None:
        """Delete the collection (tests, clean-up)."""
        if self.name is not None:
            self.client.delete_collection(self.name)
            self.collection, self.name, self.last_build = None, None, None

    def get_embeddings(self, ids) -> np.ndarray:
        """Stored embeddings of some patients, in the order asked."""
        self._require_built()
        ids = [str(u) for u in ids]
        got = self.collection.get(ids=ids, include=["embeddings"])
        pos = {u: i for i, u in enumerate(got["ids"])}
        missing = [u for u in ids if u not in pos]
        if missing:
            raise KeyError(f"not in the index: {', '.join(missing[:3])}")
        emb = np.asarray(got["embeddings"], dtype=np.float32)
        return emb[[pos[u] for u in ids]]

    def query(self, embeddings, k: int = 10, arm: str | None = None, self_ids=None,
              exclude=None) -> list[list[Hit]]:
        """Up to k nearest patients per query row (closest first), optionally of one arm.

        `self_ids[r]` (the query patient's own USUBJID, or None) and every id of `exclude` are
        never returned; the search asks for enough extra results to still return k.
        """
        Q, exclude, k = self._query_input(embeddings, k, exclude)
        if k <= 0 or not len(Q):
            return [[] for _ in range(len(Q))]
        n_total = len(self.arm_of)
        n_pool = self.arm_counts.get(arm, 0) if arm is not None else n_total
        if n_pool == 0:
            return [[] for _ in range(len(Q))]
        need = k + (1 if self_ids is not None else 0) + len(exclude & self.arm_of.keys())
        strategy = self.filter_strategy
        share = n_pool / n_total
        if arm is None:
            strategy = "none"
        elif strategy == "auto":
            strategy = ("post" if share >= POST_FILTER_MIN_SHARE and len(Q) * n_total > POST_FILTER_MIN_WORK
                        else "where")
        if strategy in ("none", "post"):
            fetch = need if strategy == "none" else math.ceil(need / share * 1.5) + 8
            fetch = min(fetch, n_total)
            ids, dists = self._raw_query(Q, fetch, where=None)
            hits = self._filter_rows(ids, dists, k, arm, self_ids, exclude)
            if fetch < n_total:
                short = [r for r, h in enumerate(hits)
                         if len(h) < min(k, self._achievable(arm, exclude, self_ids[r] if self_ids is not None else None))]
                if short:
                    sub_self = [self_ids[r] for r in short] if self_ids is not None else None
                    redo = self._where_query(Q[short], k, arm, sub_self, exclude, need, n_pool)
                    for r, h in zip(short, redo):
                        hits[r] = h
            return hits
        return self._where_query(Q, k, arm, self_ids, exclude, need, n_pool)

    def _where_query(self, Q, k, arm, self_ids, exclude, need, n_pool):
        fetch = min(need, n_pool)
        if arm is None:
            ids, dists = self._raw_query(Q, fetch, where=None)
        else:
            ids, dists = self._raw_query(Q, fetch, where={"arm": arm})
        return self._filter_rows(ids, dists, k, arm, self_ids, exclude)

    def _raw_query(self, Q: np.ndarray, n_results: int, where):
        ids: list[list[str]] = []
        dists: list[list[float]] = []
        # keep rows x results within Chroma's batch and SQL limits
        rows = max(1, min(self._max_batch(), 60_000 // max(1, n_results)))
        for s in range(0, len(Q), rows):
            res = self.collection.query(query_embeddings=Q[s:s + rows], n_results=n_results, where=where,
                                        include=["distances"])
            ids += res["ids"]
            dists += res["distances"]
        return ids, dists


class ExactIndex(_IndexBase):
    """Exact cosine k-NN in numpy over the same embeddings (the recall reference)."""

    def __init__(self):
        super().__init__()
        self.E: np.ndarray | None = None
        self.ids: list[str] = []
        self.name = "exact"

    def build(self, ids, arms, embeddings, **_ignored) -> BuildReport:
        t0 = time.perf_counter()
        ids, arms, E = self._checked(ids, arms, embeddings, contiguous=False)
        self.E = E / np.linalg.norm(E, axis=1, keepdims=True)
        self.ids = ids
        self._arms = np.asarray(arms, dtype=object)
        self._remember(ids, arms)
        self.last_build = BuildReport("exact", len(ids), len(ids), 0, False, time.perf_counter() - t0)
        return self.last_build

    def count(self) -> int:
        self._require_built()
        return len(self.ids)

    def get_embeddings(self, ids) -> np.ndarray:
        self._require_built()
        pos = {u: i for i, u in enumerate(self.ids)}
        return self.E[[pos[str(u)] for u in ids]]

    def query(self, embeddings, k: int = 10, arm: str | None = None, self_ids=None,
              exclude=None) -> list[list[Hit]]:
        Q, exclude, k = self._query_input(embeddings, k, exclude)
        if k <= 0 or not len(Q):
            return [[] for _ in range(len(Q))]
        cols = np.flatnonzero(self._arms == arm) if arm is not None else np.arange(len(self.ids))
        if not len(cols):
            return [[] for _ in range(len(Q))]
        need = min(len(cols), k + (1 if self_ids is not None else 0) + len(exclude & self.arm_of.keys()))
        E = self.E[cols]
        ids = np.asarray(self.ids, dtype=object)[cols]
        top, dist = exact_knn(Q, E, need, metric="unit_cosine")
        rows_ids = [list(ids[t]) for t in top]
        rows_dist = dist.tolist()
        return self._filter_rows(rows_ids, rows_dist, k, arm, self_ids, exclude)
