"""Streamlit helpers: cached resources and shared widgets (the only Streamlit code inside clipeval/)."""
