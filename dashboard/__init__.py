"""moe-scope dashboard: Streamlit controls, pure Plotly figure builders and page views."""
