"""Pure figure builders: DataFrame / trace in, Plotly figure out (they never run a forward)."""
