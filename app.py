"""moe-scope: `streamlit run app.py`. Page config, session state, sidebar, page."""
import streamlit as st

st.set_page_config(page_title="moe-scope", page_icon="🔀", layout="wide")

from dashboard import controls, page  # noqa: E402  (set_page_config comes first)

controls.init_session()
controls.render_sidebar()
page.render()
