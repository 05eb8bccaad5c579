"""How long a user waits for Compare and the report once a pbc run's evaluation is cached.

    .venv/bin/python bench/app_latency.py [--trial pbc] [--k 5]

One run in one process: generate placebo twins of every treated pbc patient (local, K), save
it, compute its evaluation in the background job the app starts (`precompute`), then time

- the first Compare page (Streamlit AppTest, a fresh app, the run's folder in session state:
  only what is not kept with the run is computed),
- the HTML report from the kept evaluation and effects (the Export page's and `twinarm
  export report`'s path),

and print each against the generation time of the same run; then two users open Compare on
their own runs at once (two app sessions in this process, as two browser tabs share one
server), against one alone. Targets (issue 14): first Compare <= 5 s, report <= 5 s, two
users each within 2x of one alone. Ends with one `RESULT` line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def first_compare(run, run_dir) -> float:
    """Seconds of a fresh app's first Compare page on `run` (its folder in session state)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.session_state["twin_run"] = run
    at.session_state["twin_run_dir"] = str(run_dir)
    t0 = time.perf_counter()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", default="pbc")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from streamlit.testing.v1 import AppTest

    from services.data.demo import load_demo
    from services.evaluation.comparison import cached_run_evaluation
    from services.evaluation.effects import cached_run_effects
    from services.evaluation.precompute import start_precompute
    from services.generation import get_generator
    from services.generation.run import write_run
    from services.reporting.report import build_report

    kb = load_demo(args.trial)
    control = kb.control_arm
    source = next(a for a in kb.arms if a != control)
    src = kb.subset(list(kb.subjects.loc[kb.subjects["ARM"] == source, "USUBJID"]))
    t0 = time.perf_counter()
    run = get_generator("local").fit(kb).generate(src, control, twins_per_patient=args.k, seed=0)
    gen_s = time.perf_counter() - t0
    print(f"{args.trial}: {run.n_twins} {control} twins of {len(src.subjects)} {source} patients "
          f"(local, K={args.k}) generated in {gen_s:.2f} s (fit included)")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = write_run(run, Path(tmp) / "run")
        t0 = time.perf_counter()
        job = start_precompute(kb, run, run_dir)
        job.wait_for("evaluation")
        eval_s = time.perf_counter() - t0
        for step in ("embedding", "validation", "effects"):
            job.wait_for(step)
        bg_s = time.perf_counter() - t0
        print(f"background evaluation: metrics {eval_s:.1f} s, with effects {bg_s:.1f} s "
              f"({bg_s / gen_s:.1f}x generation), errors: {job.errors or 'none'}")

        t0 = time.perf_counter()
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
        app_s = time.perf_counter() - t0
        at.session_state["twin_run"] = run
        at.session_state["twin_run_dir"] = str(run_dir)
        t0 = time.perf_counter()
        at.switch_page("pages/compare.py").run()
        compare_s = time.perf_counter() - t0
        assert not at.exception, at.exception
        t0 = time.perf_counter()
        at.run()
        again_s = time.perf_counter() - t0
        print(f"first Compare page {compare_s:.2f} s ({compare_s / gen_s:.2f}x generation; "
              f"target <= 5 s); again {again_s:.2f} s; app start {app_s:.1f} s")

        # two users at once: each opens Compare on their own run (a second run, same trial)
        run2 = get_generator("local").fit(kb).generate(src, control, twins_per_patient=args.k,
                                                       seed=1)
        run_dir2 = write_run(run2, Path(tmp) / "run2")
        for step in ("evaluation", "embedding", "validation", "effects"):
            start_precompute(kb, run2, run_dir2).wait_for(step)
        alone_s = first_compare(run2, run_dir2)
        both: dict[int, float] = {}

        def user(i, r, d):
            both[i] = first_compare(r, d)
        threads = [threading.Thread(target=user, args=(i, r, d)) for i, (r, d) in
                   enumerate([(run, run_dir), (run2, run_dir2)])]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        two_ratio = max(both.values()) / alone_s
        print(f"two users at once: first Compare {both[0]:.2f} s and {both[1]:.2f} s vs "
              f"{alone_s:.2f} s alone (ratio {two_ratio:.2f}, target <= 2)")

        t0 = time.perf_counter()
        html = build_report(kb, run, effects=cached_run_effects(kb, run, run_dir),
                            evaluation=cached_run_evaluation(kb, run, run_dir), run_dir=run_dir)
        report_s = time.perf_counter() - t0
        print(f"report {report_s:.2f} s ({report_s / gen_s:.2f}x generation; target <= 5 s), "
              f"{len(html) / 1e6:.1f} MB")
    print(f"RESULT twins={run.n_twins} generate_s={gen_s:.2f} background_metrics_s={eval_s:.1f} "
          f"background_total_s={bg_s:.1f} first_compare_s={compare_s:.2f} "
          f"compare_again_s={again_s:.2f} report_s={report_s:.2f} "
          f"compare_vs_generate={compare_s / gen_s:.2f} report_vs_generate={report_s / gen_s:.2f} "
          f"two_users_ratio={two_ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
