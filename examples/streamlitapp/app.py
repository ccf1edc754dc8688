"""A tiny Streamlit app for shipfab's streamlit stack: it reads the schema JSON beside it
(part of the release, like FinDocPipeline's complete_system_schema_export.json)."""

import json
from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent
schema = json.loads((HERE / "schema.json").read_text())
version = (HERE / "VERSION").read_text().strip() if (HERE / "VERSION").exists() else "dev"

st.title("Document pipeline")
st.caption(f"release {version}, schema {schema['version']}")
text = st.text_area("Text to scan", "Total revenue was $125.5 million")
terms = [t for t in schema["financial_terms"] if t.lower() in text.lower()]
st.write({"financial terms found": terms, "fields": schema["fields"]})
