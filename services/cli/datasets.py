"""`twinarm datasets` and `twinarm inspect`: what trials there are and how one loads."""

from __future__ import annotations

import json

from services.cli.errors import fail


def register(sub) -> None:
    p = sub.add_parser("datasets", help="list the bundled public trials")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("inspect", help="load a trial as the app does and print its summary or errors")
    p.add_argument("trial", metavar="PATH_OR_DEMO")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inspect)


def cmd_datasets(args) -> int:
    from services.data.demo import demo_names, load_demo

    rows = []
    for name in demo_names():
        trial = load_demo(name)
        rows.append({"name": name, "title": trial.title, "subjects": len(trial.subjects),
                     "arms": trial.arm_counts(), "parameters": list(trial.parameters),
                     "tte_parameters": trial.tte_parameters})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        arms = ", ".join(f"{a} {n}" for a, n in row["arms"].items())
        params = ", ".join(row["parameters"])
        tte = f"; time-to-event: {', '.join(row['tte_parameters'])}" if row["tte_parameters"] else ""
        print(f"{row['name']:<10} {row['subjects']:>5} subjects  {row['title']}")
        print(f"{'':<10} arms: {arms}")
        print(f"{'':<10} parameters: {params}{tte}")
    return 0


def cmd_inspect(args) -> int:
    from services.data.demo import resolve_trial
    from services.data.trial import TrialValidationError

    try:
        trial = resolve_trial(args.trial)
    except TrialValidationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "errors": exc.messages}, indent=2))
        else:
            print(f"{args.trial}: cannot be loaded:")
            for msg in exc.messages:
                print(f"  - {msg}")
        # the first problem itself (file, column, rows), then how many more stdout lists
        more = len(exc.messages) - 1
        return fail(exc.messages[0] + (f" (and {more} more problem{'s' if more > 1 else ''}: see above)"
                                       if more else ""))
    summary = trial.summary()
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=2, default=str))
        return 0
    print(f"{summary['title']}  ({summary['subjects']} subjects)")
    print("arms:")
    for arm, n in summary["arms"].items():
        print(f"  {arm:<30} {n:>5}{'  (control)' if arm == summary['control_arm'] else ''}")
    print("parameters:")
    for p, d in summary["parameter_details"].items():
        follow = "" if d["followup"] else "  baseline only"
        print(f"  {p:<10} {d['label']:<40} {d['records']:>7} records {d['subjects']:>5} subjects{follow}")
    print("visits:")
    for p, visits in summary["visits"].items():
        labels = ", ".join(v["avisit"] for v in visits)
        print(f"  {p:<10} {labels}")
    if summary["tte_parameters"]:
        print("time-to-event:")
        for p in summary["tte_parameters"]:
            print(f"  {p:<10} {summary['tte_events'][p]} events")
    print(f"covariates: {', '.join(summary['covariates'])}")
    for w in summary["warnings"]:
        print(f"note: {w}")
    return 0
