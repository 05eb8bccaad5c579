"""`twinarm index list|prune`: what the similar-patient store holds, and removing the indexes
nobody uses (every trial loaded, uploaded or re-uploaded with other content gets its own).

The store is the one the app uses: embedded under TWINARM_HOME/chroma, or the Chroma server
of CHROMA_HOST/CHROMA_PORT. Only TwinArm's collections are listed or removed.
"""

from __future__ import annotations

import json
import time

from services.cli.errors import CliError


def register(sub) -> None:
    p = sub.add_parser("index", help="list or prune the similar-patient indexes (Chroma)")
    verbs = p.add_subparsers(dest="index_command", required=True)

    q = verbs.add_parser("list", help="the indexes of the store, most recently used first")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_list)

    q = verbs.add_parser("prune", help="delete indexes unused for some days (rebuilt on demand)")
    q.add_argument("--unused-days", type=float, default=30, metavar="DAYS",
                   help="delete indexes not used for this many days (default 30)")
    q.add_argument("--all", action="store_true", help="delete every TwinArm index of the store")
    q.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_prune)


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "not recorded"
    days = (now - ts) / 86400
    if days < 1 / 24:
        return "just now"
    if days < 1:
        return f"{days * 24:.0f} h ago"
    return f"{days:.0f} d ago"


def _table(entries, now: float) -> None:
    print(f"{'name':<45} {'patients':>8}  {'space':<8} {'created':>12}  {'last used':>12}")
    for e in entries:
        state = "" if e.complete else "  (incomplete)"
        print(f"{e.name:<45} {e.patients:>8}  {e.space:<8} {_when(e.created, now):>12}  "
              f"{_when(e.last_used, now):>12}{state}")


def _entries(fn, **kwargs):
    from services.retrieval.index import PatientIndexError, client_description

    try:
        return fn(**kwargs)
    except PatientIndexError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001  (an unreachable server, a locked store)
        raise CliError(f"{client_description()}: {type(exc).__name__}: {exc}") from None


def run_list(args) -> int:
    from services.retrieval.index import client_description
    from services.retrieval.maintenance import list_indexes

    entries = _entries(list_indexes)
    if args.json:
        print(json.dumps({"store": client_description(),
                          "indexes": [e.to_dict() for e in entries]}, indent=2))
        return 0
    print(f"{client_description()}: {len(entries)} TwinArm index(es), "
          f"{sum(e.patients for e in entries):,} patient vectors")
    if entries:
        _table(entries, time.time())
    return 0


def run_prune(args) -> int:
    from services.retrieval.index import client_description
    from services.retrieval.maintenance import prune_indexes

    if args.unused_days < 0:
        raise CliError("--unused-days must be >= 0")
    gone = _entries(prune_indexes, unused_days=args.unused_days, everything=args.all,
                    dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    if args.json:
        print(json.dumps({"store": client_description(), "dry_run": args.dry_run,
                          "deleted": [e.to_dict() for e in gone]}, indent=2))
        return 0
    why = "all TwinArm indexes" if args.all else f"unused for {args.unused_days:g} days or more"
    print(f"{client_description()}: {verb} {len(gone)} index(es) {why}")
    if gone:
        _table(gone, time.time())
    return 0
