"""Adverse events of LLM twins (TWIN-GPT style: the model lists each twin's AEs in its reply).

What the model is told (`AEFacts.spec`, `AEFacts.histories`):

- a **dictionary of terms** it may use: the `max_terms` preferred terms most often reported
  (patients with a treatment-emergent record) in the target arm, counted without the source
  itself when it is in the knowledge base, plus every term of the prompt's neighbours. The reply's terms must be from this
  list, spelt as given (case aside); the validation rejects an invented term and tells the
  model so (`schema.validate_reply`), and a grammar-constrained server cannot write one;
- the **longest follow-up** of the target arm (`max_day`, without the source's own), onset
  days must lie in [1, max_day];
- each neighbour's treatment-emergent history as `[term, onset day]` pairs (first onset of
  each term, in onset order).

What the twin gets (`model_ae_frame`): one ADAE record per AE of the reply, with the term's
system organ class from the trial's dictionary and, for severity and seriousness (which the
model is not asked for: each extra field costs tokens on a small model), the most frequent
value of that term in the target arm (else in the trial). Records after the twin's own end
of follow-up (its last event or censoring time when it has an event history, else its last
generated visit day: the local generator's rule) are left out and counted in the manifest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.adverse import ae_columns, dictionary, emergent, followup_end

MAX_TERMS = 40          # most frequent target-arm terms offered to the model
MAX_AES_PER_TWIN = 15   # a reply listing more is rejected (a looping small model)


def _mode(values: pd.Series) -> object:
    values = values.dropna()
    return values.value_counts().index[0] if len(values) else None


class AEFacts:
    """What the prompts say about the knowledge base's adverse events (fitted once)."""

    def __init__(self, kb, max_terms: int = MAX_TERMS):
        self.kb = kb
        self.max_terms = int(max_terms)
        self.columns = ae_columns(kb)
        self.teae = emergent(kb).drop(columns=["ARM"], errors="ignore").merge(kb.subjects[["USUBJID", "ARM"]], on="USUBJID", how="left")
        terms = dictionary(kb)
        self.soc = dict(zip(terms["AEDECOD"].astype(str), terms["AEBODSYS"].astype(str)))
        self.has_days = "ASTDY" in self.teae and self.teae["ASTDY"].notna().any()
        self.end = followup_end(kb)
        self.arm_of = kb.subjects.set_index("USUBJID")["ARM"]
        self._terms: dict[str, pd.Series] = {}
        first = self.teae.sort_values("ASTDY", kind="stable") if self.has_days else self.teae
        first = first.drop_duplicates(["USUBJID", "AEDECOD"])
        self.history: dict[str, list[list]] = {}
        for u, term, day in zip(first["USUBJID"], first["AEDECOD"],
                                first["ASTDY"] if self.has_days else [None] * len(first)):
            self.history.setdefault(str(u), []).append(
                [str(term)] + ([] if day is None or pd.isna(day) else [int(day)]))

    def arm_terms(self, target_arm: str, without: str | None = None) -> list[str]:
        """The `max_terms` most frequent terms (by patients) of the target arm, counted without
        the subject `without` (a source in the knowledge base is not offered a term only it
        had)."""
        if target_arm not in self._terms:
            arm = self.teae[self.teae["ARM"] == target_arm]
            self._terms[target_arm] = arm.groupby("AEDECOD")["USUBJID"].nunique()
        counts = self._terms[target_arm]
        own = {e[0] for e in self.history.get(str(without), [])} if without is not None \
            and self.arm_of.get(without) == target_arm else set()
        if own:
            counts = counts.sub(pd.Series(1, index=sorted(own)), fill_value=0)
            counts = counts[counts > 0]
        counts = counts.sort_values(ascending=False, kind="stable")
        return [str(t) for t in counts.index[: self.max_terms]]

    def max_day(self, target_arm: str, without: str | None = None) -> int | None:
        """The longest follow-up (study days) of the target arm, without the subject `without`."""
        ids = self.arm_of.index[self.arm_of == target_arm]
        end = self.end.reindex(ids).drop(labels=[without] if without in ids else [], errors="ignore")
        end = end[np.isfinite(end)]
        return int(end.max()) if len(end) else None

    def spec(self, target_arm: str, neighbour_ids, without: str | None = None) -> dict:
        """The request's AE block: `{"terms": [...], "max_day": n, "max_count": m}` (the
        terms the reply may use; `max_day` None when the trial has no onset days)."""
        terms = list(self.arm_terms(target_arm, without))
        for u in neighbour_ids:
            for entry in self.history.get(str(u), []):
                if entry[0] not in terms:
                    terms.append(entry[0])
        return {"terms": terms, "max_day": self.max_day(target_arm, without) if self.has_days else None,
                "max_count": MAX_AES_PER_TWIN}

    def attribute(self, term: str, column: str, target_arm: str, without: str | None = None) -> object:
        """Severity / seriousness of a term in a twin: the most frequent value of that term in
        the target arm, else in the trial (the source `without` left out)."""
        if column not in self.teae:
            return None
        rows = self.teae[(self.teae["AEDECOD"] == term) & (self.teae["USUBJID"].astype(str) != str(without))]
        arm = rows[rows["ARM"] == target_arm]
        value = _mode(arm[column]) if len(arm) else None
        return value if value is not None else _mode(rows[column])


def model_ae_frame(facts: AEFacts, twins: list[tuple[str, str, list]], end: pd.Series,
                   target_arm: str) -> tuple[pd.DataFrame, int]:
    """The twins' ADAE from the replies' AEs: `twins` = [(twin id, source, [(term, day)])],
    `end` each twin's end of follow-up (NaN: unknown, then nothing dated is cut). Returns the
    frame (contract columns) and the number of records left out after the end of follow-up."""
    cols = facts.columns
    attrs: dict[tuple[str, str], object] = {}
    rows, dropped = [], 0
    for tid, src, aes in twins:
        limit = end.get(tid, np.nan)
        for term, day in sorted(aes, key=lambda a: (a[1] is None, a[1] or 0.0, a[0])):
            if day is not None and np.isfinite(limit) and day > limit:
                dropped += 1
                continue
            row = {"USUBJID": tid, "SRCSUBJID": src, "AEDECOD": term,
                   "AEBODSYS": facts.soc.get(term) or "", "ASTDY": day}
            own = src if src in facts.arm_of.index else None   # a source of the knowledge base
            for c in ("AESEV", "AESER"):
                if c in cols:
                    if (term, c, own) not in attrs:
                        attrs[(term, c, own)] = facts.attribute(term, c, target_arm, own)
                    row[c] = attrs[(term, c, own)]
            rows.append(row)
    frame = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    if "ASTDY" in frame:
        frame["ASTDY"] = pd.to_numeric(frame["ASTDY"], errors="coerce")
    return frame.reset_index(drop=True), dropped


__all__ = ["MAX_AES_PER_TWIN", "MAX_TERMS", "AEFacts", "model_ae_frame"]
