"""The `twinarm` command line (contract section 3), on the same services as the app.

Every command exits 0 on success; on bad input it prints one line `twinarm: error: ...` on
stderr and exits 2 (usage) or 1 (data).
"""

from __future__ import annotations

import argparse
import json
import sys

from services import __version__


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _fail(message: str, status: int = 1) -> int:
    first = " ".join(str(message).split("\n")[:1])
    more = str(message).count("\n")
    if more:
        first += f" (and {more} more problem{'s' if more > 1 else ''})"
    print(f"twinarm: error: {first}", file=sys.stderr)
    return status


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
        return _fail(exc.messages[0] if len(exc.messages) == 1 else
                     f"{len(exc.messages)} validation errors in {args.trial}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinarm", description="Digital twins for clinical-trial design.")
    parser.add_argument("--version", action="version", version=f"twinarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list the bundled public trials")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("inspect", help="load a trial as the app does and print its summary or errors")
    p.add_argument("trial", metavar="PATH_OR_DEMO")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inspect)

    # Commands with their own module (each has `register(subparsers)`); imported here so that
    # `twinarm datasets` stays fast and the modules can import CliError from this one.
    from services.cli import evaluate as cli_evaluate
    from services.cli import export as cli_export
    from services.cli import generate as cli_generate
    from services.cli import index as cli_index

    for module in (cli_generate, cli_evaluate, cli_export, cli_index):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
