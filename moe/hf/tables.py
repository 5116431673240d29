"""Tidy tables of one instrumented language-model forward (`moe.hf.instrument.ModelRun`), for the page and the CLI.

Definitions (one place):
- per-layer row: the layer's Trace.summary() numbers (aux on the Switch scale, E·Σ f_e·P_e).
- highest-aux layer: the one with the highest aux_loss (1 = perfectly balanced); "worst" is kept for the
  most uneven load (moe/definitions.py "worst").
- flow[l][i, j] = P(top-1 expert j at MoE layer l+1 | top-1 expert i at layer l), over the text's tokens
  (a row with no token is NaN).
- vocabulary of expert e at layer l: the tokens whose top-1 expert is e there, most frequent first.
- class NMI: normalised mutual information between a token's top-1 expert and the character class of
  its first character (moe.hf.text.CHAR_CLASSES).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from moe.hf.text import CHAR_CLASSES, byte_class
from moe.metrics import normalized_mutual_information, safe_ratio

LAYER_COLUMNS = ["layer", "aux_loss", "cv", "max_over_mean", "dead_fraction", "load_entropy",
                 "mean_confidence", "z_loss"]


def layer_table(run) -> pd.DataFrame:
    """One row per MoE layer with its routing health numbers."""
    rows = [{"layer": layer, **{k: t.summary()[k] for k in LAYER_COLUMNS[1:]}}
            for layer, t in zip(run.layers, run.traces)]
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def highest_aux_layer(table: pd.DataFrame, column: str = "aux_loss") -> int:
    """The decoder-layer index with the highest `column` (aux_loss by default; the first on ties); moe/definitions.py."""
    return int(table.loc[table[column].idxmax(), "layer"])


def load_share_long(run) -> pd.DataFrame:
    """(layer, expert, load_share) for every MoE layer and expert."""
    frames = [t.per_expert()[["expert", "load_share"]].assign(layer=layer) for layer, t in zip(run.layers, run.traces)]
    return pd.concat(frames, ignore_index=True)[["layer", "expert", "load_share"]]


def token_strings(tokenizer, ids) -> list[str]:
    """The text of each token id (decoded one by one; undecodable bytes show as '\ufffd')."""
    return [tokenizer.decode([int(i)]) for i in ids]


def token_routing(run, tokens: list[str]) -> pd.DataFrame:
    """Per-token routing, long: position, token, layer, experts (K ids, selection order), weights."""
    rows = []
    for layer, t in zip(run.layers, run.traces):
        idx, w = t.top_k_index.tolist(), t.top_k_weights.tolist()
        rows += [{"position": s, "token": tokens[s], "layer": layer, "experts": " ".join(map(str, idx[s])),
                  "weights": " ".join(f"{x:.4f}" for x in w[s])} for s in range(len(tokens))]
    return pd.DataFrame(rows, columns=["position", "token", "layer", "experts", "weights"])


def top1_grid(run) -> pd.DataFrame:
    """Top-1 expert per (layer, position): rows = MoE layers (decoder index), columns = positions."""
    return pd.DataFrame(run.top1().numpy(), index=pd.Index(run.layers, name="layer"))


def expert_vocabulary(run, tokens: list[str], ids, top: int = 8) -> pd.DataFrame:
    """(layer, expert, id, token, count): at every MoE layer, each expert's `top` most frequent top-1 tokens, a
    token being its id (`ids` (T,)), shown as its text `tokens` (T,) (two ids may decode to one text: the bytes of
    a multi-byte character each decode to U+FFFD), most frequent first, ties by text then id; counted for all
    layers in one pass."""
    top1 = run.top1().numpy()  # (L, T)
    ids = np.asarray(ids, dtype=np.int64)
    frame = pd.DataFrame({"layer": np.repeat(run.layers, top1.shape[1]), "expert": top1.ravel(),
                          "id": np.tile(ids, top1.shape[0])})
    counts = frame.value_counts(["layer", "expert", "id"]).rename("count").reset_index()
    text = dict(zip(ids.tolist(), tokens))
    counts.insert(3, "token", counts["id"].map(text))
    counts = counts.sort_values(["layer", "expert", "count", "token", "id"], ascending=[True, True, False, True, True],
                                kind="stable")
    return counts.groupby(["layer", "expert"], sort=True).head(top).reset_index(drop=True)


def flow_matrix(run, layer_pos: int) -> np.ndarray:
    """(E, E) P(top-1 at MoE layer layer_pos+1 = j | top-1 at layer_pos = i); NaN rows for unused i."""
    top1 = run.top1().numpy()
    if not 0 <= layer_pos < len(run.traces) - 1:
        raise ValueError(f"layer_pos must be in 0..{len(run.traces) - 2}: flow needs a next MoE layer")
    E = run.traces[layer_pos].config.n_experts
    counts = np.zeros((E, E))
    np.add.at(counts, (top1[layer_pos], top1[layer_pos + 1]), 1.0)
    return safe_ratio(counts, counts.sum(axis=1, keepdims=True))  # (E, E)


def token_classes(tokens: list[str] | list[bytes]) -> np.ndarray:
    """Character class index (into CHAR_CLASSES) of each token's first byte: of its text, or of the bytes it stands
    for (moe.hf.token_text.token_spans: a `▁cat` stands for " cat", a space first); none: 'other'."""
    first = [(t.encode("utf-8") if isinstance(t, str) else t)[:1] for t in tokens]
    return np.array([byte_class(b[0]) if b else len(CHAR_CLASSES) - 1 for b in first])


def class_nmi(run, tokens: list[str] | list[bytes]) -> list[float]:
    """Per MoE layer: NMI(top-1 expert; character class of each token's first byte) over the text's tokens."""
    classes = token_classes(tokens)
    return [normalized_mutual_information(row, classes) for row in run.top1().numpy()]


BALANCE_COLUMNS = ["layer", "topk_margin", "bias_overlap", "shared_fraction"]


def expert_bias_long(run) -> pd.DataFrame | None:
    """(layer, expert, bias): each MoE layer's selection-only expert bias (DeepSeek-V3's e_score_correction_bias),
    as the engine ran it; None when no layer has one."""
    frames = [pd.DataFrame({"layer": layer, "expert": np.arange(len(t.config.expert_bias)),
                            "bias": np.asarray(t.config.expert_bias, dtype=float)})
              for layer, t in zip(run.layers, run.traces) if t.config.expert_bias is not None]
    return pd.concat(frames, ignore_index=True) if frames else None


def balance_table(run) -> pd.DataFrame:
    """One row per MoE layer: top-k margin, bias overlap and the shared experts' output share on this text
    (moe/definitions.py; NaN where the layer has no bias or shared expert to measure)."""
    rows = [{"layer": layer, **{k: t.summary()[k] for k in BALANCE_COLUMNS[1:]}}
            for layer, t in zip(run.layers, run.traces)]
    return pd.DataFrame(rows, columns=BALANCE_COLUMNS)
