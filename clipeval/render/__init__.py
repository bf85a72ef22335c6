"""Plain data to HTML and figures, shared by the app and the HTML report: plotly figures (charts), tables
(tables), the glossary's text (glossary) and the self-contained report file (report). No Streamlit here."""
