"""2-D embeddings keep real structure; similarity distributions flag copies and mismatches."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from services.evaluation.projection import embed_2d, similarity_distributions


def two_clusters(n=120, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n, dim)) + np.r_[6, np.zeros(dim - 1)]
    b = rng.normal(0, 1, (n, dim)) - np.r_[6, np.zeros(dim - 1)]
    return np.vstack([a, b]).astype(np.float32), np.r_[np.zeros(n), np.ones(n)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_embedding_keeps_clusters_apart_and_is_cached(method):
    X, labels = two_clusters()
    coords = embed_2d(X, method=method, seed=1)
    assert coords.shape == (len(X), 2) and np.isfinite(coords).all()
    assert silhouette_score(coords, labels) > 0.5
    assert embed_2d(X, method=method, seed=1) is coords  # second call: cache


def test_embedding_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown embedding method"):
        embed_2d(np.zeros((10, 3)), method="pca3d")
    with pytest.raises(ValueError, match="at least 5"):
        embed_2d(np.zeros((3, 3)))


def test_similarity_distributions_copies_and_same_population():
    X, _ = two_clusters(seed=2)
    copies = similarity_distributions(X, X.copy(), twin_source_rows=np.arange(len(X)))
    assert np.allclose(copies["twin to own source"], 1.0)
    rng = np.random.default_rng(3)
    centre = np.r_[3.0, np.zeros(11)]
    real = rng.normal(0, 1, (200, 12)) + centre
    same = similarity_distributions(real, rng.normal(0, 1, (200, 12)) + centre)
    assert abs(same["within real"].mean() - same["real to twin"].mean()) < 0.05
    shifted = similarity_distributions(real, rng.normal(0, 1, (200, 12)) + np.roll(centre, 1))
    assert shifted["real to twin"].mean() < same["real to twin"].mean() - 0.3
