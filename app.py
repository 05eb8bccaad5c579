"""TwinArm: digital twins for clinical-trial design (Streamlit entry point).

`streamlit run app.py` — navigation, the sidebar and the state shared across pages.
"""

from pathlib import Path

import streamlit as st

from components.sidebar import render_sidebar
from services.evaluation.projection import configure_numba_cache, start_umap_warm_up

st.set_page_config(page_title="TwinArm", page_icon="🧬", layout="wide")

HERE = Path(__file__).parent
PAGES = [
    ("pages/overview.py", "Overview", "🏠"),
    ("pages/cohort.py", "Cohort", "👥"),
    ("pages/similar.py", "Similar patients", "🔎"),
    ("pages/whatif.py", "What-if: twin arm", "🧬"),
    ("pages/compare.py", "Compare", "📈"),
    ("pages/validate.py", "Validate", "✅"),
    ("pages/export.py", "Export & report", "📦"),
]



@st.cache_resource
def _warm_up_once_per_process():
    """UMAP's numba code compiles in the background once per server process."""
    configure_numba_cache()
    return start_umap_warm_up()


_warm_up_once_per_process()
pages = [st.Page(path, title=title, icon=icon, default=(i == 0))
         for i, (path, title, icon) in enumerate(PAGES) if (HERE / path).exists()]
navigation = st.navigation(pages)
render_sidebar()
navigation.run()
