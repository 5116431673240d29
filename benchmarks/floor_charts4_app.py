"""A reference for browser timings: the one-slider floor page plus four Plotly bar charts that the slider
changes, two by two in columns like the dashboard's Overview.

Its redraw is what four changed Plotly charts cost in Streamlit before any dashboard work: the Overview's
small multiples are measured against it.
"""
import plotly.graph_objects as go
import streamlit as st

COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]

value = st.slider("temperature", 0.05, 10.0, 1.0, step=0.05)
st.write(f"value = {value}")
for row in range(2):
    for col, chart in zip(st.columns(2), range(2 * row, 2 * row + 2)):
        bars = go.Bar(x=[str(e) for e in range(8)], y=[(1 + (e + chart) / 8) ** value for e in range(8)],
                      marker=dict(color=COLORS), hovertemplate="expert %{x}<br>value %{y:.4g}<extra></extra>")
        col.plotly_chart(go.Figure([bars], dict(title=dict(text=f"chart {chart}"), height=300)), width="stretch",
                         key=f"chart{chart}")
