"""`twinarm generate`: write a twin arm as an ADaM-lite folder (contract sections 2 and 3).

    twinarm generate --trial PATH_OR_DEMO --target-arm ARM
                     (--subjects PATH | --cohort-arm ARM)
                     [--generator local|llm] [--twins-per-patient K] [--neighbors N]
                     [--seed S] --out DIR
                     [--format csv|parquet] [--allow-remote] [--model NAME]
                     [--concurrency N] [--no-cache] [--no-hybrid]

`--subjects PATH`: a trial folder of the patients to twin; only their ADSL and baseline
records are read (the folder is loaded, then reduced with `Trial.baseline_only()`).
`--allow-remote`: consent that pseudonymised patient data may be sent to a non-local LLM
endpoint (OPENAI_BASE_URL / the OpenAI cloud); without it only a local endpoint is used.
Bad input: one line `twinarm: error: ...` on stderr and a non-zero exit status.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

from services.cli.errors import CliError
from services.generation import (
    GENERATORS,
    GeneratorError,
    available_generators,
    capabilities,
    get_generator,
)


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate K twins per source patient under a target arm",
        description="Generate a twin arm: for every source patient, K synthetic patients under "
                    "the target arm, written as an ADaM-lite folder with manifest.json.")
    p.add_argument("--trial", required=True, metavar="PATH_OR_DEMO",
                   help="the knowledge base: a trial folder or a bundled demo name")
    p.add_argument("--target-arm", required=True, metavar="ARM",
                   help="the arm the twins are generated under (e.g. the control arm)")
    p.add_argument("--subjects", metavar="PATH",
                   help="a trial folder of the patients to twin (only ADSL and baseline are read)")
    p.add_argument("--cohort-arm", metavar="ARM", help="twin every subject of this arm of --trial")
    names = available_generators()
    p.add_argument("--generator", default="local", choices=names,
                   help="; ".join(f"{n}: {capabilities(n).label}" for n in names) + " (default local)")
    p.add_argument("--twins-per-patient", type=int, default=None, metavar="K",
                   help="twins per source patient (default: the generator's, "
                        + ", ".join(f"{n} {capabilities(n).twins_per_patient}" for n in names) + ")")
    p.add_argument("--neighbors", type=int, default=None, metavar="N",
                   help="similar patients used per source (default: the generator's)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--format", default="csv", choices=["csv", "parquet"], help="file format")
    p.add_argument("--allow-remote", action="store_true",
                   help="llm: agree that pseudonymised patient data go to a non-local endpoint")
    p.add_argument("--model", default=None, help="llm: model name (default TWINARM_LLM_MODEL)")
    p.add_argument("--concurrency", type=int, default=None, help="llm: parallel requests")
    p.add_argument("--no-cache", action="store_true", help="llm: do not reuse cached replies")
    p.add_argument("--no-hybrid", action="store_true",
                   help="llm: no reference forecast of the local generator in the prompt")
    p.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="any other setting of the generator (VALUE read as JSON, else text); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)

    def one_line_error(message: str) -> None:  # argparse errors: one line, status 2
        print(f"twinarm: error: generate: {message}", file=sys.stderr)
        raise SystemExit(2)

    p.error = one_line_error


def _load_knowledge_base(spec: str):
    from services.data.demo import resolve_trial
    from services.data.trial import TrialValidationError

    try:
        return resolve_trial(spec)
    except TrialValidationError as exc:
        more = f" (and {len(exc.messages) - 1} more)" if len(exc.messages) > 1 else ""
        raise CliError(f"--trial {spec}: {exc.messages[0]}{more}") from None


def _load_sources(args, kb):
    from services.data.loading import load_trial
    from services.data.quality import source_mismatches
    from services.data.trial import TrialValidationError

    if bool(args.subjects) == bool(args.cohort_arm):
        raise CliError("give exactly one of --subjects PATH (patients to twin) or --cohort-arm ARM "
                       f"(an arm of --trial: {', '.join(kb.arms)})")
    if args.cohort_arm:
        if args.cohort_arm not in kb.arm_counts():
            raise CliError(f"--cohort-arm '{args.cohort_arm}' is not an arm of {kb.name} "
                           f"(arms: {', '.join(kb.arms)})")
        ids = list(kb.subjects.loc[kb.subjects["ARM"] == args.cohort_arm, "USUBJID"])
        return kb.subset(ids, name=f"{kb.name} / {args.cohort_arm}")
    path = Path(args.subjects).expanduser()
    if not path.is_dir():
        raise CliError(f"--subjects {args.subjects}: no such folder")
    try:
        trial = load_trial(path)
    except TrialValidationError as exc:
        more = f" (and {len(exc.messages) - 1} more)" if len(exc.messages) > 1 else ""
        raise CliError(f"--subjects {args.subjects}: {exc.messages[0]}{more}") from None
    problems = source_mismatches(kb, trial)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CliError(f"--subjects {args.subjects}: {problems[0]}{more}")
    return trial.baseline_only()


# flag -> (the generator setting it fills, its value from args); given only to generators
# whose __init__ takes that setting
_FLAG_SETTINGS = {
    "neighbors": lambda a: a.neighbors,
    "allow_remote": lambda a: a.allow_remote,
    "use_cache": lambda a: not a.no_cache,
    "hybrid": lambda a: not a.no_hybrid,
    "model": lambda a: a.model or None,
    "concurrency": lambda a: a.concurrency,
}


def _settings(args) -> dict:
    cls = GENERATORS[args.generator]
    accepted = inspect.signature(cls.__init__).parameters
    if args.neighbors is not None and args.neighbors < 1:
        raise CliError(f"--neighbors must be >= 1, got {args.neighbors}")
    settings: dict = {}
    for name, value_of in _FLAG_SETTINGS.items():
        value = value_of(args)
        if name in accepted and value is not None:
            settings[name] = value
    for item in args.setting:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"--setting {item!r}: use NAME=VALUE")
        if name not in accepted or name == "self":
            raise CliError(f"--setting {name}: not a setting of the {args.generator} generator "
                           f"(settings: {', '.join(p for p in accepted if p != 'self')})")
        try:
            settings[name] = json.loads(text)
        except ValueError:
            settings[name] = text
    return settings


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def progress_text(done: int, total: int, unit: str, elapsed_s: float, working_s: float) -> str:
    """The progress line: `done/total unit (elapsed)`; when the unit is twins (one call per
    twin, seconds each) also seconds per twin and the time left, from `working_s`, the time
    since the generator reported its first progress (so not the fit or a model's start)."""
    text = f"{done}/{total} {unit} ({elapsed_s:.0f} s"
    if unit == "twins" and done > 0:
        per = working_s / done
        text += f", {per:.1f} s per twin"
        if done < total:
            text += f", about {_duration(per * (total - done))} left"
    return text + ")"


class _Progress:
    """A one-line progress indicator on stderr (only on a terminal)."""

    def __init__(self, enabled: bool, unit: str):
        self.enabled = enabled
        self.unit = unit
        self.t0 = time.perf_counter()
        self.started: float | None = None  # the generator's first report
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        if done < total and now - self.last < 0.5:
            return
        self.last = now
        text = progress_text(done, total, self.unit, now - self.t0, now - self.started)
        print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr, flush=True)


# a bound that keeps a typo (1000000000) from a memory error: 1,000 twins of 10,000 patients
# already take ~4 GB, and past ~100 a patient's twins add no precision an analysis can see
MAX_TWINS_PER_PATIENT = 1000


def run(args) -> int:
    from services.generation.run import write_run

    if args.twins_per_patient is not None and not 1 <= args.twins_per_patient <= MAX_TWINS_PER_PATIENT:
        raise CliError(f"--twins-per-patient must be between 1 and {MAX_TWINS_PER_PATIENT}, got "
                       f"{args.twins_per_patient} (more twins of a patient add Monte-Carlo precision, not information)")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    kb = _load_knowledge_base(args.trial)
    for note in kb.warnings:           # trial.toml keys or names the data do not have (`meta_check`)
        if note.startswith("trial.toml:"):
            print(f"note: {note}", file=sys.stderr)
    if args.target_arm not in kb.arm_counts():
        raise CliError(f"--target-arm '{args.target_arm}' is not an arm of {kb.name} "
                       f"(arms: {', '.join(kb.arms)})")
    sources = _load_sources(args, kb)
    t0 = time.perf_counter()
    try:
        gen = get_generator(args.generator, **_settings(args))
        gen.check_ready()                  # e.g. llm without an endpoint: fail before any work
        gen.fit(kb)
        progress = _Progress(not args.quiet and sys.stderr.isatty(), gen.capabilities.progress_unit)
        twins = gen.generate(sources, target_arm=args.target_arm,
                             twins_per_patient=args.twins_per_patient, seed=args.seed,
                             progress=progress)
    except GeneratorError as exc:
        raise CliError(str(exc)) from None
    seconds = time.perf_counter() - t0
    failures = twins.failures
    if twins.n_twins == 0:
        why = f": {failures[0]['reason']} ({'; '.join(failures[0].get('errors', []))[:200]})" \
            if failures else ""
        raise CliError(f"no twin could be generated{why}")
    try:
        folder = write_run(twins, out, fmt=args.format)
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    print(summary_text(twins, folder, seconds))
    for note in twins.manifest.get("notes") or []:   # what the run says of its data (sources without a baseline, ...)
        print(f"note: {note}", file=sys.stderr)
    return 0


def summary_text(run, folder, seconds: float) -> str:
    """One paragraph: what was written, failures, time, where."""
    m = run.manifest
    counts = m.get("counts") or {}
    k = m.get("twins_per_patient")
    text = (f"Wrote {run.n_twins} twins under '{run.target_arm}' ({counts.get('sources', '?')} "
            f"source patients x {k}) with the {m.get('generator')} generator")
    if m.get("model"):
        text += f" (model {m['model']}, prompt {m.get('prompt_version')})"
    text += f", seed {m.get('seed')}, in {seconds:.1f} s to {folder}."
    failures = run.failures
    if failures:
        reasons: dict[str, int] = {}
        for f in failures:
            reasons[f.get("reason", "error")] = reasons.get(f.get("reason", "error"), 0) + 1
        text += (f" {len(failures)} twin(s) failed ("
                 + ", ".join(f"{n} {r}" for r, n in reasons.items())
                 + "); see failures in manifest.json.")
    else:
        text += " No failures."
    usage = (m.get("llm") or {}).get("usage")
    if usage:
        text += (f" LLM: {usage['calls']} calls, {usage['cache_hits']} cached, "
                 f"{usage['input_tokens']}+{usage['output_tokens']} tokens, estimated cost "
                 f"${usage['estimated_cost_usd']:.4f}.")
    return text
