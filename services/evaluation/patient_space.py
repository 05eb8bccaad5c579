"""Real patients and twins in one vector space: their patient vectors, a 2-D embedding
(t-SNE / UMAP, `projection`) and the cosine-similarity distributions Compare shows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.evaluation.comparison import TARGET, Comparison
from services.evaluation.run_store import cached_in_run


def patient_vectors(comp: Comparison, space: str = "full"):
    """(real vectors of the knowledge base, twin vectors) on a scale fitted on the knowledge
    base (services.retrieval.vectors), embedded in `space` (L2-normalised)."""
    from services.retrieval.vectors import PatientVectorizer

    vec = PatientVectorizer().fit(comp.kb)
    return vec.transform(comp.kb), vec.transform(comp.twins)


def embedding_points(comp: Comparison, method: str = "umap", seed: int = 0, max_points: int = 2000,
                     space: str = "full") -> pd.DataFrame:
    """2-D embedding of real patients (every arm) and twins: x, y, SOURCE, ARM, USUBJID.
    Above `max_points` a random sample keeps the page responsive (same sample for a seed)."""
    from services.evaluation.projection import embed_2d

    real, twin = patient_vectors(comp, space)
    X = np.vstack([real.embed(space), twin.embed(space)])
    frame = pd.DataFrame({"SOURCE": ["real"] * len(real) + ["twin"] * len(twin),
                          "ARM": list(real.arms) + [f"{a} (twin)" for a in twin.arms],
                          "USUBJID": list(real.ids) + list(twin.ids)})
    if len(frame) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_points, replace=False))
        frame, X = frame.iloc[keep].reset_index(drop=True), X[keep]
    coords = embed_2d(X, method=method, seed=seed)
    return frame.assign(x=coords[:, 0], y=coords[:, 1])


def cached_embedding_points(comp: Comparison, run_dir=None, method: str = "umap",
                            seed: int = 0) -> pd.DataFrame:
    """`embedding_points`, kept as `embedding_<method>.json` in the run's folder (`run_store`):
    t-SNE of a 790-twin run takes ~10 s, the report and Compare show the same points."""
    key = {"knowledge_base": comp.kb.content_hash, "run_id": comp.manifest.get("run_id"),
           "method": method, "seed": seed}
    points = cached_in_run(run_dir, f"embedding_{method}", key, lambda: embedding_points(
        comp, method=method, seed=seed).to_dict(orient="list"))
    return pd.DataFrame(points)


def similarity(comp: Comparison, space: str = "full", seed: int = 0) -> dict[str, np.ndarray]:
    """Cosine similarities within the real target arm, within twins, real-to-twin, and of each
    twin to its own source patient (services.evaluation.projection.similarity_distributions)."""
    from services.evaluation.projection import similarity_distributions

    real, twin = patient_vectors(comp, space)
    R, T = real.embed(space), twin.embed(space)
    target_ids = set(comp.groups[TARGET].subjects["USUBJID"])
    dist = similarity_distributions(R[[i for i, u in enumerate(real.ids) if u in target_ids]], T, seed=seed)
    if "SRCSUBJID" in comp.twins.subjects:
        pos = {u: i for i, u in enumerate(real.ids)}
        src = comp.twins.subjects.set_index("USUBJID")["SRCSUBJID"].astype(str)
        pairs = [(i, pos[src[t]]) for i, t in enumerate(twin.ids) if src.get(t) in pos]
        if pairs:
            ti, ri = map(np.array, zip(*pairs))
            dist["twin to own source"] = np.einsum("ij,ij->i", T[ti], R[ri]).astype(float)
    return dist


