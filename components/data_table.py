"""One table widget for the app: the frame as `services.reporting.tables.table_for_display`
shows it (every column, labelled, codes spelled out), as the report shows it too."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from services.reporting.tables import COLUMN_LABELS, code_labels, label_of, table_for_display

__all__ = ["COLUMN_LABELS", "code_labels", "data_table", "label_of", "table_for_display"]


def data_table(frame: pd.DataFrame, *, labels: dict[str, str] | None = None, codes: dict[str, dict] | None = None,
               digits: int = 3, key: str | None = None) -> pd.DataFrame:
    """Render `frame` with every column, labelled; returns the frame as shown."""
    shown = table_for_display(frame, labels=labels, codes=codes, digits=digits)
    st.dataframe(shown, hide_index=True, width="stretch", key=key)
    return shown
