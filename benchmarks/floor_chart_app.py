"""A reference for browser timings: the one-slider floor page plus one Plotly bar chart that the slider changes.

Its redraw over the floor's is what one changed Plotly chart costs in Streamlit, before any dashboard work.
"""
import plotly.graph_objects as go
import streamlit as st

value = st.slider("temperature", 0.05, 10.0, 1.0, step=0.05)
st.write(f"value = {value}")
bars = go.Bar(x=[str(e) for e in range(8)], y=[(1 + e / 8) ** value for e in range(8)],
              marker=dict(color=["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692",
                                 "#b6e880"]),
              hovertemplate="expert %{x}<br>value %{y:.4g}<extra></extra>")
st.plotly_chart(go.Figure([bars], dict(title=dict(text="one chart"), height=340)), width="stretch", key="chart")
