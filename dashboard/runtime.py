"""Process-wide tuning for the Streamlit server that hosts the dashboard."""
from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_startup_objects() -> None:
    """Move everything alive after the imports (torch, pandas, plotly, streamlit) out of the collector's view.

    Streamlit runs a full `gc.collect(2)` after every script run (`runner.postScriptGC`) to keep memory
    in check. With torch, pandas and plotly loaded that walks ~250,000 long-lived objects: ~120 ms on a
    2-core machine, during which the server cannot send the finished page; it was most of a redraw.
    After `gc.freeze()` those import-time objects are skipped, the collection takes well under 1 ms, and
    per-run garbage (results, figures) is still collected. Runs once per process.
    """
    global _frozen
    with _lock:
        if _frozen:
            return
        gc.collect()
        gc.freeze()
        _frozen = True
