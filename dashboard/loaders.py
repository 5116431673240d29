"""Every cache of the dashboard. The Playground's: cached, read-only base layers (bounded in bytes across sessions),
one forward per spec, all within the memory budget (moe.memory.budget_bytes, env MOE_SCOPE_MEMORY_GB). The Model
page's: the loaded models (moe.hf.cache) and the tables of one (model, text) forward (st.cache_data)."""
from __future__ import annotations

import dataclasses
import re
import threading
import weakref
from collections import OrderedDict

import numpy as np
import pandas as pd
import streamlit as st
import torch

from moe import MoEConfig, MoELayer
from moe.config import WEIGHT_FIELDS  # the fields that fix a layer's weights: the cache key
from moe.hf import cache as model_cache
from moe.hf.counterfactual import Counterfactual, run_counterfactual, sweep_layers
from moe.hf.instrument import adapter_for, run_model
from moe.hf.report import EMPTY_TEXT_PAGE, encode_text, render_report
from moe.hf.tables import (balance_table, class_nmi, expert_bias_long, expert_vocabulary, flow_matrix, layer_table,
                           load_share_long, token_routing, token_strings, top1_grid)
from moe.hf.token_text import token_spans
from moe.metrics import nats_to_bits
from moe.memory import budget_bytes, check_budget, describe_over, estimate_bytes
from moe.scenarios import make_batch

from dashboard.figures.model import visible_token
from dashboard.links import RunSpec
from dashboard.model_link import MAX_TOKENS_LIMIT
from dashboard.result import RunResult


def weight_key(cfg: MoEConfig) -> tuple:
    """The cache key: two configs with the same key have the same weights."""
    return tuple(getattr(cfg, name) for name in WEIGHT_FIELDS)


class LayerCache:
    """Base layers shared by every session, bounded in bytes: the least recently used go first.

    A cached layer is read-only (inference only, gradients off). One lock guards the table and the
    building, so two sessions asking for the same new weights build them once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layers: OrderedDict[tuple, tuple[MoELayer, int]] = OrderedDict()  # key -> (layer, bytes)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(n for _, n in self._layers.values())

    def get(self, cfg: MoEConfig, room: int) -> MoELayer:
        """The base layer for cfg's weights; evicts until its weights fit in `room` bytes (ValueError if never)."""
        key = weight_key(cfg)
        weights = estimate_bytes(cfg, 1)["weights"]
        with self._lock:
            if key in self._layers:
                self._layers.move_to_end(key)
                return self._layers[key][0]
            while self._layers and sum(n for _, n in self._layers.values()) + weights > room:
                self._layers.popitem(last=False)
            if weights > room:
                weights_text, room_text = describe_over(weights, max(room, 0))
                raise ValueError(f"the weights ({weights_text}) do not fit in the memory left now "
                                 f"({room_text}): results kept by open sessions take the rest "
                                 f"of the budget; try again later or lower n_experts, d_expert or d_model")
            layer = _build(cfg)
            self._layers[key] = (layer, weights)
            return layer


def _build(cfg: MoEConfig) -> MoELayer:
    base = MoEConfig(top_k=1, **{name: getattr(cfg, name) for name in WEIGHT_FIELDS})
    layer = MoELayer(base).requires_grad_(False).eval()
    with torch.inference_mode():  # warm-up: the first forward in a process pays one-off set-up costs
        layer(torch.randn(8, cfg.d_model))
    return layer


LAYERS = LayerCache()
# Results that sessions keep (st.session_state holds them); they leave this set when no session does.
# Keyed by id(): a RunResult is not hashable (it holds dicts); a dead result's entry leaves with it.
_KEPT: weakref.WeakValueDictionary[int, RunResult] = weakref.WeakValueDictionary()
_KEPT_LOCK = threading.Lock()


def result_bytes(result: RunResult) -> int:
    """Bytes of the tensors a kept result holds (its trace and labels)."""
    tensors = [getattr(result.trace, f.name) for f in dataclasses.fields(result.trace)] + [result.labels]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def kept_bytes() -> int:
    with _KEPT_LOCK:
        return sum(result_bytes(r) for r in list(_KEPT.values()))


WARM_REPEATS = 3        # repeats of the forward after the first, for its warm time (DEFINITIONS["warm_forward_ms"])
WARM_BUDGET_S = 0.3     # ... while their total stays within this many seconds


def timed_forward(layer: MoELayer, x: torch.Tensor, repeats: int = WARM_REPEATS,
                  budget_s: float | None = None) -> tuple:
    """(the first forward's trace, the wall times in ms of the repeats that fit the budget).

    The first forward after a change pays one-off costs; the repeats, on the same input, measure the warm time.
    A repeat starts only when the last forward's time says it fits in what is left of the budget (default
    WARM_BUDGET_S, read when called), so a forward slower than the budget is never repeated.
    """
    budget_s = WARM_BUDGET_S if budget_s is None else budget_s
    with torch.inference_mode():
        _, trace = layer(x)
        times: list[float] = []
        last_s, spent_s = trace.forward_ms / 1e3, 0.0
        while len(times) < repeats and spent_s + last_s <= budget_s:
            _, again = layer(x)
            times.append(again.forward_ms)
            last_s = again.forward_ms / 1e3
            spent_s += last_s
    return trace, tuple(times)


def run(spec: RunSpec) -> RunResult:
    """Check the memory budget, draw the batch, run one forward, bring the trace to the host.

    The budget (MOE_SCOPE_MEMORY_GB) covers this forward, the cached weights and every session's kept result.
    """
    cfg = spec.config
    budget = budget_bytes()
    check_budget(cfg, spec.tokens, budget)
    est = estimate_bytes(cfg, spec.tokens)
    base = LAYERS.get(cfg, room=budget - est["activations"] - est["trace"] - kept_bytes())
    layer = base.reconfigured(cfg)  # per-run routing settings; weights shared read-only
    batch = make_batch(spec.scenario, cfg.d_model, spec.tokens, seed=cfg.seed, **spec.params)
    x = batch.x if spec.seq_len is None else batch.x.reshape(-1, spec.seq_len, cfg.d_model)  # (B, S, D)
    threads = torch.get_num_threads()  # read only: the thread count is process-wide, never set per request
    # A repeat runs while the first forward's trace is held: only when a second forward fits the budget too.
    spare = budget - LAYERS.held_bytes - kept_bytes() - est["runtime"] - 2 * (est["activations"] + est["trace"])
    trace, warm_times = timed_forward(layer, x, repeats=WARM_REPEATS if spare >= 0 else 0)
    trace = trace.cpu()
    summary = trace.summary()
    warnings = []
    if summary["nonfinite"] > 0 or summary["nonfinite_output"] > 0:
        warnings.append(f"{summary['nonfinite']:.0f} router logits and {summary['nonfinite_output']:.0f} output "
                        "values are not finite (NaN/inf): the numbers below are not meaningful; check the input "
                        "and the dtype (float16 overflows above 65504).")
    result = RunResult(config=cfg, scenario=spec.scenario, scenario_params=spec.params, trace=trace,
                       per_expert=trace.per_expert(), summary=summary, labels=batch.labels,
                       label_names=batch.label_names, device=trace.device, warnings=warnings,
                       threads=threads, seq_len=spec.seq_len, warm_times_ms=warm_times)
    with _KEPT_LOCK:
        _KEPT[id(result)] = result
    return result



# --- the Model page: a trained language model routing a text
def loaded_model(path: str):
    """The model in `path`, shared by every session (read-only once loaded); the models kept are bounded by the
    memory budget in bytes, together with the next load and forward (moe.hf.cache)."""
    return model_cache.get(path, MAX_TOKENS_LIMIT)


def _route(path: str, text: str, max_tokens: int):
    """(the cached model, its instrumented forward on the text, the token strings, the untruncated token count,
    the ids)."""
    loaded = loaded_model(path)
    ids, total = encode_text(loaded.tokenizer, text, max_tokens, EMPTY_TEXT_PAGE)
    run = run_model(loaded.model, ids, context=loaded.context)  # long texts: windows of the model's context
    return loaded, run, token_strings(loaded.tokenizer, ids.tolist()), total, ids


def analyse(path: str, text: str, max_tokens: int) -> dict:
    """Everything the view draws for one (model, text, max_tokens), as plain tables (a copy per caller).

    The downloads are not in here: they are built when a button is clicked (`exports`). Cached with the model
    directory's fingerprint (moe.hf.cache.fingerprint), as every table below: a model re-saved in the same
    directory is analysed again, never answered from the old one's numbers."""
    return _analyse(path, text, max_tokens, model_cache.fingerprint(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _analyse(path: str, text: str, max_tokens: int, fingerprint: tuple) -> dict:
    loaded, run, tokens, total, ids = _route(path, text, max_tokens)
    spans = token_spans(loaded.tokenizer, ids.tolist(), text)  # the text each token stands for
    L = len(run.layers)
    return {"name": loaded.name, "path": loaded.path, "tokens": tokens, "total": total, "layers": run.layers,
            "n_experts": run.traces[0].config.n_experts, "top_k": run.traces[0].config.top_k,
            "score": run.traces[0].config.score,
            "top1": run.top1().numpy(), "grid": top1_grid(run),
            "table": layer_table(run), "load": load_share_long(run), "loss": run.token_loss().numpy(),
            "token_bytes": [len(span) for span in spans],
            "context": run.context, "windows": run.windows,
            "dropped": [int(t.summary()["dropped"]) for t in run.traces],
            "demand": [int(t.summary()["demand"]) for t in run.traces],
            "pooled_aux": run.pooled_aux(), "pooled_hf_aux": run.pooled_hf_aux(), "nmi": class_nmi(run, spans),
            "flows": [flow_matrix(run, i) for i in range(L - 1)], "vocab": vocabulary_cells(run, tokens, ids.tolist()),
            "routing_only": run.routing_only, "family": loaded.family, "notes": adapter_for(loaded.family).notes,
            "bias": expert_bias_long(run), "balance": balance_table(run), "text": text, "max_tokens": max_tokens}


def routing_with_loss(run, tokens: list[str]) -> pd.DataFrame:
    """token_routing with `next_token_loss_bits`: at position s, `−log₂ p(token_{s+1} | tokens ≤ s)` (the loss
    of predicting the next token; empty at the last position, which predicts nothing in the text)."""
    routing = token_routing(run, tokens)
    bits = np.append(nats_to_bits(run.token_loss().numpy()), np.nan)  # (S,)
    return routing.assign(next_token_loss_bits=bits[routing["position"].to_numpy()])


def model_exports(path: str, text: str, max_tokens: int) -> dict[str, str]:
    """The three downloads for one (model, text, max_tokens): the same forward as `analyse`, run again on a
    click (the page does not hold them between clicks). Per-expert CSV and summary JSON as `model-report`."""
    return _model_exports(path, text, max_tokens, model_cache.fingerprint(path))


@st.cache_data(max_entries=4, show_spinner=False)
def _model_exports(path: str, text: str, max_tokens: int, fingerprint: tuple) -> dict[str, str]:
    loaded, run, tokens, _, _ = _route(path, text, max_tokens)
    return {"per_expert_csv": render_report(loaded.name, run, "csv"),
            "routing_csv": routing_with_loss(run, tokens).to_csv(index=False),
            "summary_json": render_report(loaded.name, run, "json")}


def md_literal(text: str) -> str:
    """`text` shown as is in a Markdown cell (st.table cells are Markdown): every ASCII punctuation escaped."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def vocabulary_cells(run, tokens: list[str], ids) -> dict[int, pd.DataFrame]:
    """Per MoE layer (decoder index): a row per expert with its most frequent top-1 tokens as one cell; a text that
    more than one of the text's token ids decode to is followed by its id (`#195`), so two tokens never read as
    one."""
    vocab = expert_vocabulary(run, tokens, ids)
    shared = pd.Series(dict(zip(np.asarray(ids).tolist(), tokens))).value_counts()  # text -> distinct ids
    names = [md_literal(visible_token(t)) + (f" #{i}" if shared[t] > 1 else "") for t, i in zip(vocab["token"],
                                                                                                 vocab["id"])]
    cells = pd.Series(names, index=vocab.index) + " (" + vocab["count"].astype(str) + ")"
    words = cells.groupby([vocab["layer"], vocab["expert"]], sort=True).agg(", ".join)
    return {layer: pd.DataFrame({"expert": group.index.get_level_values("expert"),
                                 "most frequent top-1 tokens (count)": group.values})
            for layer, group in words.groupby(level="layer")}


def counterfactual(path: str, text: str, max_tokens: int, cf: Counterfactual) -> dict:
    """The counterfactual forward's load (long table), per-token loss and dropped assignments per layer."""
    return _counterfactual(path, text, max_tokens, cf, model_cache.fingerprint(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _counterfactual(path: str, text: str, max_tokens: int, cf: Counterfactual, fingerprint: tuple) -> dict:
    loaded = loaded_model(path)
    ids, _ = encode_text(loaded.tokenizer, text, max_tokens, EMPTY_TEXT_PAGE)
    run = run_counterfactual(loaded.model, ids, cf, context=loaded.context)
    return {"load": load_share_long(run), "loss": run.token_loss().numpy(),
            "dropped": [int(t.summary()["dropped"]) for t in run.traces],
            "demand": [int(t.summary()["demand"]) for t in run.traces],
            "table": layer_table(run), "pooled_aux": run.pooled_aux()}


def counterfactual_sweep(path: str, text: str, max_tokens: int, cf: Counterfactual) -> pd.DataFrame:
    """The counterfactual at each MoE layer alone (moe.hf.counterfactual.sweep_layers): a row per layer."""
    return _counterfactual_sweep(path, text, max_tokens, cf, model_cache.fingerprint(path))


@st.cache_data(max_entries=8, show_spinner=False)
def _counterfactual_sweep(path: str, text: str, max_tokens: int, cf: Counterfactual,
                          fingerprint: tuple) -> pd.DataFrame:
    loaded = loaded_model(path)
    ids, _ = encode_text(loaded.tokenizer, text, max_tokens, EMPTY_TEXT_PAGE)
    return sweep_layers(loaded.model, ids, cf, context=loaded.context)
