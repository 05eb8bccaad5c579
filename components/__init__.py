"""Reusable Streamlit widgets and Plotly figure builders (no domain logic)."""
