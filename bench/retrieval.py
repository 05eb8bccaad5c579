"""Retrieval bench: our Chroma layer against raw Chroma and exact numpy k-NN.

    .venv/bin/python bench/retrieval.py            # 10k and 100k synthetic patients + trials
    .venv/bin/python bench/retrieval.py --quick    # 10k only

Synthetic patients: 40-dimensional vectors with cluster structure (30 clusters), 3 arms of
unequal size (40/30/30%). For each size:

- build: `PatientIndex.build` (our layer: idempotency checks, batching, metadata) vs a raw
  `chromadb` batch add of the same vectors into a collection with the same HNSW
  configuration; ratio = ours / raw (target <= 1.2). Also the time to reopen a built index.
- recall@10 of arm-filtered neighbours of a 1,000-patient cohort (self excluded) against the
  exact numpy k-NN (`ExactIndex`) (target >= 0.95), for our automatic strategy and for a plain
  `where={"arm": ...}` query.
- the time to fetch 10 arm-filtered neighbours for the whole cohort (target <= 2 s at 100k),
  after one warm-up query (the first query after opening a collection loads its index).
Recall counts a neighbour tied with the exact k-th (same distance) as found.

Then the bundled demo trials and the CDISC pilot (when ../shared is present): vectorise +
index time, reopen time, cohort query time and recall against `ExactRetriever`.
Runs on a temporary TWINARM_HOME; ends with one `RESULT name=value ...` line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PILOT = ROOT.parent / "shared" / "data" / "cdiscpilot01"


def synthetic(n: int, dim: int = 40, clusters: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    label = rng.integers(0, clusters, n)
    X = centres[label] + rng.normal(scale=0.8, size=(n, dim))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    arms = rng.choice(np.array(["A", "B", "C"]), size=n, p=[0.4, 0.3, 0.3])
    ids = [f"SYN-{i:07d}" for i in range(n)]
    return ids, [str(a) for a in arms], X


def raw_build(client, name: str, ids, arms, X, hnsw: dict) -> float:
    t0 = time.perf_counter()
    col = client.create_collection(name, configuration={"hnsw": dict(hnsw)}, embedding_function=None)
    b = client.get_max_batch_size()
    for s in range(0, len(ids), b):
        col.add(ids=ids[s:s + b], embeddings=X[s:s + b], metadatas=[{"arm": a} for a in arms[s:s + b]])
    return time.perf_counter() - t0


def recall(got, ref, k: int, tol: float = 1e-5) -> float:
    """Share of the exact k nearest found; a neighbour tied with the exact k-th (same distance
    within `tol`) counts as found (ties are frequent when covariates are categorical)."""
    scores = []
    for g, r in zip(got, ref):
        r = r[:k]
        if not r:
            continue
        truth = {h.usubjid for h in r}
        kth = r[-1].distance
        found = sum(1 for h in g[:k] if h.usubjid in truth or h.distance <= kth + tol)
        scores.append(min(found, len(r)) / len(r))
    return float(np.mean(scores))


def bench_synthetic(client, n: int, reps: int, queries: int, k: int, results: dict) -> None:
    from services.retrieval.index import DEFAULT_HNSW, ExactIndex, PatientIndex

    tag = f"{n // 1000}k"
    ids, arms, X = synthetic(n, seed=n)
    print(f"\n== synthetic {n:,} patients, {X.shape[1]} dims, arms "
          f"{ {a: arms.count(a) for a in 'ABC'} } ==")
    raw_t, our_t = [], []
    index = None
    for rep in range(reps):
        raw_t.append(raw_build(client, f"raw_{tag}_{rep}", ids, arms, X, DEFAULT_HNSW))
        index = PatientIndex(client=client)
        rep_report = index.build(ids, arms, X, name=f"ours_{tag}_{rep}", trial_hash=f"synthetic{n}",
                                 space="baseline", fingerprint=f"rep{rep}")
        assert rep_report.added == n and not rep_report.reused
        our_t.append(rep_report.seconds)
        print(f"  build rep {rep + 1}: raw chromadb {raw_t[-1]:.2f} s, PatientIndex {our_t[-1]:.2f} s")
    raw_s, our_s = statistics.median(raw_t), statistics.median(our_t)
    ratio = our_s / raw_s
    reopen = PatientIndex(client=client)
    rr = reopen.build(ids, arms, X, name=f"ours_{tag}_{reps - 1}", trial_hash=f"synthetic{n}",
                      space="baseline", fingerprint=f"rep{reps - 1}")
    assert rr.reused and rr.added == 0
    print(f"  build median: raw {raw_s:.2f} s, ours {our_s:.2f} s, ratio {ratio:.3f} (target <= 1.2); "
          f"reopen (idempotent, nothing added) {rr.seconds:.3f} s")

    exact = ExactIndex()
    exact.build(ids, arms, X)
    rng = np.random.default_rng(1)
    cohort = rng.choice(n, size=min(queries, n), replace=False)
    Q = X[cohort]
    self_ids = [ids[i] for i in cohort]
    t0 = time.perf_counter()
    ref = exact.query(Q, k=k, arm="A", self_ids=self_ids)
    exact_s = time.perf_counter() - t0
    ref_all = exact.query(Q, k=k, self_ids=self_ids)

    timings = {}
    recalls = {}
    for strategy in ("auto", "where"):
        idx = PatientIndex(client=client, filter_strategy=strategy)
        idx.build(ids, arms, X, name=f"ours_{tag}_{reps - 1}", trial_hash=f"synthetic{n}", space="baseline",
                  fingerprint=f"rep{reps - 1}")
        idx.query(Q[:1], k=k, arm="A")        # warm-up: the first query loads the index
        t0 = time.perf_counter()
        got = idx.query(Q, k=k, arm="A", self_ids=self_ids)
        timings[strategy] = time.perf_counter() - t0
        recalls[strategy] = recall(got, ref, k)
        assert all(len(g) == k and all(h.arm == "A" and h.usubjid != s for h in g)
                   for g, s in zip(got, self_ids))
        print(f"  cohort of {len(Q)} x {k} arm-filtered neighbours [{strategy}]: {timings[strategy]:.2f} s, "
              f"recall@{k} {recalls[strategy]:.4f}")
    t0 = time.perf_counter()
    got_all = index.query(Q, k=k, self_ids=self_ids)
    unf_s = time.perf_counter() - t0
    rec_all = recall(got_all, ref_all, k)
    print(f"  cohort unfiltered: {unf_s:.2f} s, recall@{k} {rec_all:.4f}; exact numpy arm-filtered "
          f"{exact_s:.2f} s")
    results.update({
        f"build_raw_s_{tag}": raw_s, f"build_ours_s_{tag}": our_s, f"build_ratio_{tag}": ratio,
        f"reopen_s_{tag}": rr.seconds,
        f"recall10_{tag}": recalls["auto"], f"recall10_where_{tag}": recalls["where"],
        f"recall10_unfiltered_{tag}": rec_all,
        f"cohort_query_s_{tag}": timings["auto"], f"cohort_query_where_s_{tag}": timings["where"],
        f"cohort_query_unfiltered_s_{tag}": unf_s, f"exact_query_s_{tag}": exact_s,
    })
    for name in [f"raw_{tag}_{r}" for r in range(reps)] + [f"ours_{tag}_{r}" for r in range(reps)]:
        client.delete_collection(name)


def bench_trial(client, name: str, trial, k: int, results: dict) -> None:
    from services.retrieval.index import PatientIndex
    from services.retrieval.retriever import ExactRetriever, Retriever

    ids = list(trial.subjects["USUBJID"])
    t0 = time.perf_counter()
    r = Retriever(trial, index=PatientIndex(client=client)).fit()
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = Retriever(trial, index=PatientIndex(client=client)).fit()
    reopen_s = time.perf_counter() - t0
    assert again.build_report.reused and again.build_report.added == 0
    exact = ExactRetriever(trial).fit()
    arm = trial.control_arm
    r.neighbours(ids[0], arm=arm, k=k)           # warm-up
    t0 = time.perf_counter()
    got = r.neighbours_many(ids, arm=arm, k=k)
    q_s = time.perf_counter() - t0
    ref = exact.neighbours_many(ids, arm=arm, k=k)
    rec = recall([got[u] for u in ids], [ref[u] for u in ids], k)
    dim = r.embeddings.shape[1]
    print(f"  {name}: {len(ids)} patients, {dim} dims; vectorise + index {fit_s:.2f} s, reopen {reopen_s:.2f} s "
          f"(nothing added), {len(ids)} x {k} neighbours in '{arm}' {q_s:.3f} s, recall@{k} {rec:.4f}")
    key = name.replace("-", "_")
    results.update({f"{key}_recall10": rec, f"{key}_index_s": fit_s, f"{key}_query_s": q_s})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k synthetic patients only (and the trials)")
    ap.add_argument("--queries", type=int, default=1000, help="cohort size (default 1000)")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="twinarm_bench_")
    os.environ["TWINARM_HOME"] = home
    os.environ.pop("CHROMA_HOST", None)
    os.environ.pop("CHROMA_PORT", None)
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    from services.retrieval.index import DEFAULT_HNSW, get_client, reset_client

    reset_client()
    started = time.perf_counter()
    results: dict[str, float] = {}
    try:
        client = get_client()
        print(f"TWINARM_HOME={home} (temporary); HNSW {DEFAULT_HNSW}; {os.cpu_count()} CPUs")
        sizes = [(10_000, 3)] if args.quick else [(10_000, 3), (100_000, 1)]
        for n, reps in sizes:
            bench_synthetic(client, n, reps, args.queries, args.k, results)

        print("\n== trials ==")
        from services.data.demo import demo_names, load_demo
        from services.data.loading import load_trial

        for name in demo_names():
            bench_trial(client, name, load_demo(name), args.k, results)
        if PILOT.exists():
            bench_trial(client, "pilot", load_trial(PILOT, name="cdiscpilot01"), args.k, results)
        else:
            print("  CDISC pilot not present (../shared/data/cdiscpilot01): skipped")
    finally:
        reset_client()
        shutil.rmtree(home, ignore_errors=True)
    total = time.perf_counter() - started
    results["total_s"] = total
    print(f"\ntotal {total:.1f} s")
    order = ["build_ratio_10k", "build_ratio_100k", "recall10_10k", "recall10_100k", "cohort_query_s_10k",
             "cohort_query_s_100k"]
    keys = [k for k in order if k in results] + sorted(k for k in results if k not in order)
    print("RESULT " + " ".join(f"{k}={results[k]:.4g}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
