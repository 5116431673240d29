"""Loaded models kept for reuse by every session of a server, bounded by bytes, not by entries.

The models kept (their weights and tokenizers), the one being loaded and the largest forward of any of them
share one memory budget (`moe.memory.budget_bytes()`): before a model is loaded, the least recently used
ones are dropped until that sum fits; a model that does not fit alone is refused with the figures. Loads
are serialised, so two sessions cannot both pass the check and load at once.
"""
from __future__ import annotations

import pathlib
import threading
from collections import OrderedDict

from moe.hf.load import LoadedModel, load_model, model_estimate
from moe.memory import budget_bytes

_LOCK = threading.Lock()
_MODELS: OrderedDict[tuple, LoadedModel] = OrderedDict()


def fingerprint(path: str) -> tuple:
    """Every file's (name, size, time) in the directory: changes when a model is re-saved there. Results computed
    from a model are keyed on it too, so they follow the model the cache loads. Empty when the directory cannot be
    listed (the load then says why, in one line)."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in pathlib.Path(path).iterdir()
                            if f.is_file()))
    except OSError:
        return ()


def _key(path: str, tokens: int) -> tuple:
    """The directory, the token bound, and the directory's fingerprint: a re-saved model is loaded again."""
    return str(path), tokens, fingerprint(path)


def _need(kept: list[LoadedModel], estimate: dict) -> int:
    """Bytes held when `estimate`'s model is loaded next to `kept` and the largest forward of any runs."""
    forward = max([m.estimate.get("forward", 0) for m in kept] + [estimate["forward"]])
    return sum(m.resident_bytes for m in kept) + estimate["total"] - estimate["forward"] + forward


def get(path: str, tokens: int) -> LoadedModel:
    """The model in `path` (already resolved by the caller), loaded once and kept while the budget allows."""
    with _LOCK:
        key = _key(path, tokens)
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        estimate = model_estimate(path, tokens)  # refuses a bad directory before anything is dropped
        budget = budget_bytes()
        while _MODELS and _need(list(_MODELS.values()), estimate) > budget:
            _MODELS.popitem(last=False)  # the least recently used
        kept = list(_MODELS.values())
        held = _need(kept, estimate) - estimate["total"]
        loaded = load_model(path, tokens=tokens, budget=budget, held=held, estimate=estimate)
        _MODELS[key] = loaded
        return loaded


def held_bytes() -> int:
    """What the kept models hold (weights and tokenizers), by their estimates."""
    with _LOCK:
        return sum(m.resident_bytes for m in _MODELS.values())


def kept_paths() -> list[str]:
    with _LOCK:
        return [key[0] for key in _MODELS]


def clear() -> None:
    with _LOCK:
        _MODELS.clear()
