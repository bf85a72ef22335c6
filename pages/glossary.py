"""Glossary: every term the pages use, one entry each; every help icon links here."""

import streamlit as st

from clipeval.render.glossary import TERMS

st.title("Glossary")
st.caption("The terms the explorer uses. Help icons (?) on every page link to an entry here.")
st.markdown(" · ".join(f"[{title}](#{anchor})" for anchor, (title, _) in TERMS.items()))
for anchor, (title, text) in TERMS.items():
    st.subheader(title, anchor=anchor)
    st.markdown(text.strip())
