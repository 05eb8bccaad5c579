"""Exact k-nearest-neighbour search in numpy: the one implementation behind the exact patient
index (the recall reference of Chroma) and the privacy metrics' distances to closest records."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

CHUNK = 256   # query rows per distance block (bounds memory at chunk x points)


def distances(queries: np.ndarray, points: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Pairwise distances. `metric="unit_cosine"`: 1 - q.x for rows already of unit length
    (the dtype of the inputs is kept); anything else goes to `scipy.spatial.distance.cdist`."""
    if metric == "unit_cosine":
        return 1.0 - queries @ points.T
    return cdist(queries, points, metric=metric)


def exact_knn(queries, points, k: int, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances (queries x k, nearest first; equal distances keep the points'
    order) of each query's k nearest points. k is capped at the number of points."""
    Q = np.asarray(queries)
    X = np.asarray(points)
    k = min(int(k), len(X))
    idx = np.empty((len(Q), max(k, 0)), dtype=int)
    dist = np.empty((len(Q), max(k, 0)), dtype=np.result_type(Q.dtype, X.dtype, np.float32))
    if k <= 0 or not len(Q):
        return idx, dist
    for s in range(0, len(Q), CHUNK):
        D = distances(Q[s:s + CHUNK], X, metric)
        if k < D.shape[1]:
            part = np.argpartition(D, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(D.shape[1]), (D.shape[0], 1))
        d_part = np.take_along_axis(D, part, axis=1)
        order = np.argsort(d_part, axis=1, kind="stable")
        idx[s:s + CHUNK] = np.take_along_axis(part, order, axis=1)
        dist[s:s + CHUNK] = np.take_along_axis(d_part, order, axis=1)
    return idx, dist
