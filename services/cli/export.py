"""`twinarm export` (ADaM-lite in CSV, SAS XPORT v5 or Parquet, folder or zip) and
`twinarm report` (the self-contained HTML report) for a run folder."""

from __future__ import annotations

from pathlib import Path

from services.cli.errors import CliError


def register(sub) -> None:
    p = sub.add_parser("export", help="export a twin arm as CSV, SAS XPORT v5 or Parquet (folder or .zip)")
    p.add_argument("--run", required=True, metavar="DIR", help="a folder written by `twinarm generate`")
    p.add_argument("--format", choices=("csv", "xpt", "parquet"), default="csv")
    p.add_argument("--out", required=True, metavar="PATH", help="a folder, or a file ending in .zip")
    p.add_argument("--trial", metavar="PATH_OR_DEMO", help="the knowledge base, for its STUDYID and the decimals "
                   "of each parameter (default: the one named in the run's manifest, when it is a bundled trial)")
    p.set_defaults(func=run_export)

    p = sub.add_parser("report", help="write the self-contained HTML report of a twin arm")
    p.add_argument("--run", required=True, metavar="DIR", help="a folder written by `twinarm generate`")
    p.add_argument("--trial", metavar="PATH_OR_DEMO", help="the knowledge base (default: the one named in the "
                   "run's manifest, when it is a bundled trial)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_report)


def _read(run_dir: str):
    from services.generation.run import read_run

    if not Path(run_dir).is_dir():
        raise CliError(f"--run {run_dir}: not a folder")
    try:
        return read_run(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"--run {run_dir}: {exc}") from None


def _knowledge_base(run, trial: str | None):
    """The run's knowledge base (`--trial`, else the bundled trial its manifest names)."""
    from services.data.demo import resolve_trial
    from services.data.trial import TrialValidationError

    kb_info = run.manifest.get("knowledge_base") or {}
    source = trial or kb_info.get("name")
    if not source:
        raise CliError("the run's manifest names no knowledge base: pass --trial PATH_OR_DEMO")
    try:
        kb = resolve_trial(source)
    except TrialValidationError as exc:
        raise CliError(f"knowledge base {source}: {exc.messages[0]} (pass --trial PATH_OR_DEMO)") from None
    if kb_info.get("content_hash") and kb_info["content_hash"] != kb.content_hash:
        raise CliError(f"knowledge base {source} is not the data this run was generated from "
                       "(content hash differs): pass the right --trial")
    return kb


def run_export(args) -> int:
    from services.reporting.export import export_folder, export_zip

    run = _read(args.run)
    try:
        kb = _knowledge_base(run, args.trial)
    except CliError as exc:
        if args.trial:
            raise
        kb = None
        print(f"note: {exc}; values are exported unrounded, STUDYID is the manifest's knowledge-base name")
    out = Path(args.out)
    if out.suffix.lower() == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(export_zip(run, args.format, knowledge_base=kb))
    else:
        export_folder(run, out, args.format, knowledge_base=kb)
    print(f"{run.n_twins} twins exported as {args.format} to {out}")
    return 0


def run_report(args) -> int:
    from services.reporting.report import build_report

    run = _read(args.run)
    kb = _knowledge_base(run, args.trial)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from services.evaluation.comparison import cached_run_evaluation
    from services.evaluation.effects import cached_run_effects

    # both kept in the run's folder: the app's, when it computed them first
    effects = cached_run_effects(kb, run, args.run, seed=args.seed)
    evaluation = cached_run_evaluation(kb, run, args.run, seed=args.seed)
    out.write_text(build_report(kb, run, seed=args.seed, effects=effects, evaluation=evaluation,
                                run_dir=args.run), encoding="utf-8")
    print(f"report written to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
