"""Generation throughput: the offline `local` generator and the `llm` generator's own overhead.

    .venv/bin/python bench/generate.py
    .venv/bin/python bench/generate.py --k 10 --llm-twins 64 --concurrency 8 --latency 0.2

1. `local` on the CDISC pilot vitals (`../shared/data/cdiscpilot01`, skipped when absent): the
   168 treated patients get K placebo twins. Throughput = source patients x K / seconds of
   `generate` (fitted generator, target-arm model warm; fit times printed apart).
2. `local` on a 10,000-patient synthetic ADaM-lite trial built in a temporary folder (ADSL with
   two arms and three covariates, one BDS dataset `adlb` with three parameters at baseline and
   five scheduled visits, an ADTTE): the 5,000 active patients get K control twins.
3. `llm` against `tests/llm_server.py`'s ScriptedOpenAIServer (real HTTP on 127.0.0.1 in a
   child process, as a real endpoint would be; real LangChain client) answering every call
   `--latency` s after it arrived: `--llm-twins` twins of PBC patients at `--concurrency`,
   cache off, `--repeats` runs (median and best reported: the machine is shared). Ideal wall
   time = twins x latency / concurrency; efficiency = ideal / wall of the LLM phase (target >= 0.9); own overhead per
   twin = time spent outside HTTP waits (prompt building, validation, scheduling), from
   `RunUsage`.

Runs on a temporary TWINARM_HOME; ends with one `RESULT name=value ...` line. `llm_efficiency`
is the median of the runs (the figure held against the 0.9 target), `llm_efficiency_best` the
least disturbed run.

Last run (2 cores, K 10, 5 LLM runs):

    local CDISC pilot vitals: 168 x 10 = 1,680 twins (85,680 records) in 0.31 s -> 5,429 twins/s
    local synthetic 10k: 5,000 x 10 = 50,000 twins (764,160 records) in 3.28 s -> 15,257 twins/s
    llm: 64 twins, concurrency 8, latency 0.2 s: 1.70-1.73 s vs ideal 1.60 s -> efficiency
         0.927-0.942 (median 0.937); own overhead 2-3 ms/twin

Since the first call to a local endpoint runs alone (issue 16: it negotiates the structured
output and measures the server, see `services/generation/llm/pacing.py`), the scripted server
loses one 200 ms call of the ideal 1.6 s: median 0.80 (best 0.83) over 5 runs, own overhead
25-29 ms/twin of which ~22 ms is lanes waiting for a slot during that first call. Against a
real endpoint (seconds per call, many calls) that first call is a small share of the run.

What took the LLM phase from 0.85 (median; 0.88 best) to 0.93, measured back to back:
- the client's CPU per twin, which every lane waits for under the interpreter lock: the prompt
  is sanitised on a fast path and checked for dates once per distinct text (3.5 -> 1.5 ms);
  `response_format` travels in `extra_body` (same JSON on the wire), which spares the OpenAI
  client's type walk of the schema and LangChain's `parse` path (5.3 -> 3.8 ms per call);
- scheduling: each lane takes its next twin itself (no hand-off through the calling thread)
  while the calling thread prepares the next prompts; the pre-existing heap is frozen for the
  run, as a full collection of it stopped every lane for ~0.15 s about once in four runs;
- the scripted server now answers `latency` after it received the request, its own parsing and
  reply building included (before, they came on top: ~2 ms per call not ours). With the old
  server the new client reaches 0.91 (median); with the new server the old client 0.89.

The rest, on the same machine and server: raw httpx posts of the same size reach ~0.97;
LangChain's `ChatOpenAI.invoke` costs ~2.1 ms of CPU per call against 0.66 ms for a raw post.
Without TCP_NODELAY on the scripted server every call stalls ~40 ms (delayed ACK).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PILOT = ROOT.parent / "shared" / "data" / "cdiscpilot01"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np
import pandas as pd


def synthetic_trial(folder: Path, n: int = 10_000, seed: int = 0) -> Path:
    """An ADaM-lite trial of `n` patients: ADSL, ADLB (3 parameters x baseline + 5 visits),
    ADTTE, trial.toml. Values follow a per-patient random intercept and slope."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"SYN-{i:05d}" for i in range(n)])
    arm = np.where(np.arange(n) % 2 == 0, "Control", "Active")
    age = rng.normal(60, 10, n).round(1)
    sex = rng.choice(["F", "M"], n)
    stage = rng.choice(["I", "II", "III"], n, p=[0.4, 0.4, 0.2])
    pd.DataFrame({"STUDYID": "SYN", "USUBJID": ids, "ARM": arm, "AGE": age, "SEX": sex,
                  "STAGE": stage}).to_csv(folder / "adsl.csv", index=False)
    visits = [(0, "Baseline", 1), (4, "Week 4", 29), (8, "Week 8", 57), (12, "Week 12", 85),
              (24, "Week 24", 169), (52, "Week 52", 365)]
    params = {"HBA1C": (7.5, 1.0, -0.02, "%"), "LDL": (130, 25, -0.3, "mg/dL"),
              "SBP": (135, 12, -0.1, "mmHg")}
    rows = []
    effect = np.where(arm == "Active", 1.0, 0.0)
    for p, (mu, sd, slope, _unit) in params.items():
        base = mu + sd * rng.standard_normal(n) + 0.02 * sd * (age - 60)
        own = slope * (1 + 0.5 * rng.standard_normal(n)) - 0.5 * slope * effect
        for avisitn, avisit, ady in visits:
            val = base + own * avisitn + 0.3 * sd * rng.standard_normal(n) * (avisitn > 0)
            keep = rng.random(n) > (0.0 if avisitn == 0 else 0.03 * avisitn / 12)
            rows.append(pd.DataFrame({
                "STUDYID": "SYN", "USUBJID": ids[keep], "PARAMCD": p, "PARAM": p,
                "AVAL": val[keep].round(2), "ADY": ady, "AVISITN": avisitn, "AVISIT": avisit,
                "ABLFL": "Y" if avisitn == 0 else ""}))
    pd.concat(rows, ignore_index=True).to_csv(folder / "adlb.csv", index=False)
    hazard = 1 / 900 * np.exp(0.03 * (age - 60)) * np.where(arm == "Active", 0.7, 1.0)
    event = rng.exponential(1 / hazard)
    censor = rng.uniform(200, 730, n)
    pd.DataFrame({"STUDYID": "SYN", "USUBJID": ids, "PARAMCD": "OS", "PARAM": "Overall survival",
                  "AVAL": np.ceil(np.minimum(event, censor)),
                  "CNSR": (censor < event).astype(int)}).to_csv(folder / "adtte.csv", index=False)
    (folder / "trial.toml").write_text(
        'title = "Synthetic 10k trial (bench)"\ncontrol_arm = "Control"\n\n[units]\n'
        + "".join(f'{p} = "{u[3]}"\n' for p, u in params.items()), encoding="utf-8")
    return folder


def bench_local(kb, source_arms: list[str], target_arm: str, k: int, label: str) -> float:
    from services.generation import get_generator

    ids = list(kb.subjects.loc[kb.subjects["ARM"].isin(source_arms), "USUBJID"])
    sources = kb.subset(ids)
    t0 = time.perf_counter()
    gen = get_generator("local").fit(kb)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.arm_model(target_arm)                     # warm the target arm's model
    t_arm = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = gen.generate(sources, target_arm, twins_per_patient=k, seed=1)
    t_gen = time.perf_counter() - t0
    rate = len(ids) * k / t_gen
    records = sum(len(f) for f in run.bds.values())
    print(f"local {label}: {len(ids)} sources x {k} twins = {run.n_twins} twins, {records:,} BDS "
          f"records in {t_gen:.2f} s -> {rate:,.0f} twins/s (before: fit, similar-patient index and "
          f"target-arm model {t_fit + t_arm:.1f} s)")
    return rate


def _serve(queue, latency: float) -> None:
    """Child process: the scripted OpenAI-compatible server (like a real endpoint, it does not
    share the client's interpreter lock)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import llm_server

    srv = llm_server.ScriptedOpenAIServer(latency_s=latency).start()
    queue.put(srv.base_url)
    threading.Event().wait()


def bench_llm(kb, n_twins: int, concurrency: int, latency: float,
              repeats: int) -> tuple[float, float, float]:
    import multiprocessing as mp

    from services.generation.llm import LLMSettings
    from services.generation.llm.generator import LLMGenerator

    ids = list(kb.subjects.loc[kb.subjects["ARM"] != kb.control_arm, "USUBJID"])
    k = 2
    sources = kb.subset(ids[: (n_twins + k - 1) // k])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(queue, latency), daemon=True)
    server.start()
    try:
        base_url = queue.get(timeout=60)
        settings = LLMSettings(base_url=base_url, api_key="sk-bench", model="scripted-model",
                               concurrency=concurrency, timeout_s=30, temperature=0.0)
        gen = LLMGenerator(settings=settings, use_cache=False).fit(kb)
        gen.generate(kb.subset(ids[-2:]), kb.control_arm, twins_per_patient=1, seed=99)  # warm-up
        runs = []
        for r in range(repeats):
            t0 = time.perf_counter()
            run = gen.generate(sources, kb.control_arm, twins_per_patient=k, seed=1 + r)
            total = time.perf_counter() - t0
            usage = run.manifest["llm"]["usage"]
            twins = usage["twins"]
            ideal = twins * latency / concurrency
            wall = usage["wall_seconds"]
            runs.append((ideal / wall, usage["overhead_ms_per_twin"]))
            prep = run.manifest["timings"]
            print(f"llm run {r + 1}: {twins} twins ({usage['ok']} ok), concurrency {concurrency}, "
                  f"latency {latency:g} s: LLM phase {wall:.3f} s vs ideal {ideal:.3f} s -> "
                  f"efficiency {ideal / wall:.3f}; own overhead {usage['overhead_ms_per_twin']:.2f} "
                  f"ms/twin; whole generate {total:.2f} s (retrieval {prep['retrieval_s']:.2f} s, "
                  f"local reference {prep['reference_s']:.2f} s)")
    finally:
        server.terminate()
        server.join(10)
    runs.sort()
    median, best = runs[len(runs) // 2], runs[-1]
    print(f"llm: efficiency median {median[0]:.3f}, best {best[0]:.3f} of {repeats} runs "
          "(the machine is shared: the best run is the least disturbed)")
    return median[0], best[0], median[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=10, help="twins per source patient (local)")
    ap.add_argument("--n", type=int, default=10_000, help="patients of the synthetic trial")
    ap.add_argument("--llm-twins", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=5,
                    help="LLM runs (median and best are reported)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="twinarm-bench-generate-"))
    os.environ["TWINARM_HOME"] = str(tmp / "home")
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHROMA_HOST", "CHROMA_PORT"):
        os.environ.pop(var, None)
    from services.data.demo import load_demo
    from services.data.loading import load_trial

    result: dict[str, float | str] = {}
    if PILOT.exists():
        pilot = load_trial(PILOT, name="cdiscpilot01")
        treated = [a for a in pilot.arms if a != pilot.control_arm]
        result["local_twins_per_s_pilot"] = bench_local(pilot, treated, pilot.control_arm, args.k,
                                                        "CDISC pilot vitals")
    else:
        print(f"CDISC pilot not found at {PILOT}: skipped")
        result["local_twins_per_s_pilot"] = "skipped"

    t0 = time.perf_counter()
    folder = synthetic_trial(tmp / "synthetic", n=args.n)
    syn = load_trial(folder, name="synthetic10k")
    print(f"synthetic trial: {len(syn.subjects):,} patients, {sum(len(f) for f in syn.bds.values()):,} "
          f"records, built and loaded in {time.perf_counter() - t0:.1f} s")
    result["local_twins_per_s_10k"] = bench_local(syn, ["Active"], "Control", args.k, "synthetic 10k")

    eff, eff_best, own_ms = bench_llm(load_demo("pbc"), args.llm_twins, args.concurrency,
                                      args.latency, args.repeats)
    result["llm_efficiency"] = eff
    result["llm_efficiency_best"] = eff_best
    result["llm_overhead_ms_per_twin"] = own_ms
    print("RESULT " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
