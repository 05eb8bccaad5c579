"""What leaves the app: Plotly figure builders (shared by the pages and the report), the
self-contained HTML report, and export of twin arms (CSV, XPT, Parquet, zip)."""
