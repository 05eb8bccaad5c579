"""The table component: every column shown, labels instead of raw names, codes spelled out."""

from __future__ import annotations

import pandas as pd

from components.data_table import code_labels, label_of, table_for_display


def test_every_column_is_kept_and_labelled():
    frame = pd.DataFrame({"PARAMCD": ["BILI", "ALB"], "km_sup_twins": [0.123456, float("nan")],
                          "cindex_cox": [0.7, 0.65], "some_new_column": [1, 2]})
    shown = table_for_display(frame, codes={"PARAMCD": code_labels({"BILI": "Bilirubin (mg/dl)"})})
    assert list(shown.columns) == ["parameter", "KM distance, twins vs held-out", "C-index, Cox model",
                                   "some new column"]
    assert list(shown["parameter"]) == ["Bilirubin (mg/dl) [BILI]", "ALB"]       # unknown code kept
    assert shown.iloc[0, 1] == 0.123 and pd.isna(shown.iloc[1, 1])
    assert list(shown["some new column"]) == [1, 2]


def test_page_labels_come_first_and_clashing_labels_keep_both_columns():
    assert label_of("n") == "patients" and label_of("n", {"n": "twins"}) == "twins"
    shown = table_for_display(pd.DataFrame({"n": [1], "patients": [2]}))
    assert list(shown.columns) == ["patients", "patients [patients]"]
