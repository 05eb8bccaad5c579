"""Plotly figure builders (no Streamlit): the pages render them, the HTML report embeds them."""
