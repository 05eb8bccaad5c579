"""2-D embeddings (t-SNE, UMAP) and cosine-similarity distributions of patient vectors.

UMAP is compiled by numba on first use, which takes tens of seconds: compiled code is cached
on disk under `TWINARM_HOME/numba_cache` and `warm_up_umap()` compiles it once per process (the
app calls it in a background thread at start), so the Compare page never freezes on it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np

from services.config import home_subdir

METHODS = ("tsne", "umap")
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()
_WARM = threading.Event()


def configure_numba_cache() -> None:
    """Point numba's on-disk cache at TWINARM_HOME (before umap/numba is imported)."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(home_subdir("numba_cache")))


def is_umap_warm() -> bool:
    return _WARM.is_set()


def start_umap_warm_up() -> threading.Thread:
    """Compile UMAP in a daemon thread so no page waits for it."""
    thread = threading.Thread(target=warm_up_umap, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


def warm_up_umap() -> float:
    """Compile UMAP's numba code once per process; returns seconds spent (0 when warm)."""
    import time

    if _WARM.is_set():
        return 0.0
    with _LOCK:
        if _WARM.is_set():
            return 0.0
        start = time.perf_counter()
        configure_numba_cache()
        import umap

        data = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
        umap.UMAP(n_neighbors=10, n_components=2, random_state=0, n_epochs=20).fit_transform(data)
        _WARM.set()
        return time.perf_counter() - start


def embed_2d(X: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """Project rows of X to 2-D; cached by (content, method, seed) within the process."""
    if method not in METHODS:
        raise ValueError(f"unknown embedding method {method!r}; use one of {', '.join(METHODS)}")
    X = np.nan_to_num(np.asarray(X, dtype=np.float32))
    if len(X) < 5:
        raise ValueError(f"an embedding needs at least 5 patients (got {len(X)})")
    key = hashlib.sha256(X.tobytes() + f"{X.shape}|{method}|{seed}".encode()).hexdigest()
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if method == "umap":
        warm_up_umap()
        import umap

        n_neighbors = int(min(15, max(2, len(X) - 1)))
        coords = umap.UMAP(n_neighbors=n_neighbors, n_components=2, random_state=seed, metric="cosine",
                           n_epochs=200,
                           init="spectral" if len(X) > n_neighbors + 1 else "random").fit_transform(X)
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                      max_iter=500, metric="cosine").fit_transform(X)
    coords = np.asarray(coords, dtype=np.float32)
    with _LOCK:
        _CACHE[key] = coords
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return coords


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.nan_to_num(np.asarray(X, dtype=np.float64))
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms == 0, 1.0, norms)


def similarity_distributions(real_X: np.ndarray, twin_X: np.ndarray, twin_source_rows=None,
                             max_pairs: int = 50_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Cosine similarities within real patients, within twins, and real-to-twin (all pairs,
    subsampled to `max_pairs`), plus twin-to-own-source when `twin_source_rows` (the row of each
    twin's source in real_X) is given. Twins that mirror the real population give overlapping
    within-real and real-to-twin distributions; twin-to-source far above real-to-twin means
    twins stay personal, and values near 1 would mean copies."""
    rng = np.random.default_rng(seed)
    R, T = _unit(real_X), _unit(twin_X)

    def pairs_within(M):
        n = len(M)
        if n < 2:
            return np.array([])
        total = n * (n - 1) // 2
        if total <= max_pairs:
            i, j = np.triu_indices(n, k=1)
        else:
            i = rng.integers(0, n, max_pairs)
            j = rng.integers(0, n, max_pairs)
            keep = i != j
            i, j = i[keep], j[keep]
        return np.einsum("ij,ij->i", M[i], M[j])

    def pairs_between(A, B):
        if len(A) * len(B) <= max_pairs:
            return (A @ B.T).ravel()
        i = rng.integers(0, len(A), max_pairs)
        j = rng.integers(0, len(B), max_pairs)
        return np.einsum("ij,ij->i", A[i], B[j])

    out = {"within real": pairs_within(R), "within twins": pairs_within(T), "real to twin": pairs_between(R, T)}
    if twin_source_rows is not None:
        rows = np.asarray(twin_source_rows)
        ok = rows >= 0
        out["twin to own source"] = np.einsum("ij,ij->i", T[ok], R[rows[ok]])
    return out
