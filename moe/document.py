"""The report document of one forward: the config (with the input's description), the summary and the per-expert
table, as one strict JSON object (NaN and inf are null) or as CSV (key,value sections, then the table).
`python -m moe report` prints it; `ep-report` prints it with its expert-parallel tables added."""
from __future__ import annotations

import io

import pandas as pd

from moe.jsonio import dumps


def document(config: dict, summary: dict, table: pd.DataFrame, extra: dict | None = None) -> dict:
    """The JSON document as a dict (dumps makes it strict); `extra` (the scenario, tokens, ...) joins the config."""
    return {"config": {**config, **(extra or {})}, "summary": summary, "per_expert": table.to_dict(orient="records")}


def render(config: dict, summary: dict, table: pd.DataFrame, fmt: str, extra: dict | None = None) -> str:
    """The document in `fmt` ("json" or "csv"); `extra` (the scenario, tokens, ...) joins the config."""
    if fmt == "json":
        return dumps(document(config, summary, table, extra), indent=2)
    config = {**config, **(extra or {})}
    out = io.StringIO()
    out.write("# config\n")
    pd.Series(config, dtype=object).rename("value").to_csv(out, header=["value"], index_label="key")
    out.write("# summary\n")
    pd.Series(summary).rename("value").to_csv(out, header=["value"], index_label="key")
    out.write("# per_expert\n")
    table.to_csv(out, index=False)
    return out.getvalue()
