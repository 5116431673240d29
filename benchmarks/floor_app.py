"""The floor for browser timings: a trivial one-slider Streamlit page."""
import streamlit as st

value = st.slider("temperature", 0.05, 10.0, 1.0, step=0.05)
st.write(f"value = {value}")
