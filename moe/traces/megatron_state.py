"""Megatron-LM's router state dump (`--moe-routing-trace-dump-weights`): `router_state_rank{R}.pt` next to the traces.

Producer: NVIDIA/Megatron-LM megatron/core/transformer/moe/router_trace.py (RouterTracer.flush, commit
059f0f5c78cddcfa10e34842607d68b745631aeb): `torch.save({layer: {"weight": float32 [E, H], "expert_bias": float32 [E]
or None, "score_function": str or None, "topk": int or None}})`, keyed by the integer `layer` of the trace records
(decoder and MTP layers of one number share a key there). Loaded only through moe.traces.safeload.load_pt
(weights_only). Kept per layer: score_function, topk and expert_bias (as a list); the weights only as a digest, to
list the layers whose router differs between ranks (different pipeline stages reuse layer numbers).
"""
from __future__ import annotations

import hashlib
import math
import os
import re

import torch

from moe.roots import LinksOutside, lies_in, open_inside
from moe.traces.records import TraceLimits
from moe.traces.safeload import load_pt

STATE_KEYS = ("weight", "expert_bias", "score_function", "topk")
SCORE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # "softmax", "sigmoid", ...: shown on the page, so a plain word


def read_router_states(paths: list[str], ranks: list[int], n_experts: int, top_k: int | None,
                       limits: TraceLimits, layers: list[str] | None = None) -> dict:
    """{"router_state": {layer: {...}}, "router_state_ranks": [...], "router_state_differs": [...]} from the dumps
    next to the rank files (none: {}), of `layers` only when given; a malformed dump is one ValueError line."""
    states, digests, found = {}, {}, []
    keep = None if layers is None else {x.rsplit(".", 1)[-1] for x in layers}  # "mtp0.3" is keyed by its layer 3
    for path, rank in zip(paths, ranks):
        side = os.path.join(os.path.dirname(os.path.realpath(path)), f"router_state_rank{rank}.pt")
        if not _state_file(path, side):
            continue
        found.append(rank)
        for layer, entry in _load(side, n_experts, top_k, limits, keep).items():
            digest = entry.pop("digest")
            states.setdefault(layer, entry)
            digests.setdefault(layer, set()).add(digest)
    if not found:
        return {}
    order = sorted(states, key=int)
    return {"router_state": {k: states[k] for k in order}, "router_state_ranks": found,
            "router_state_differs": [k for k in order if len(digests[k]) > 1]}


def _state_file(trace: str, side: str) -> bool:
    """Whether the dump is there: only next to a file named router_trace_rank{R}.jsonl, inside its directory."""
    if not re.fullmatch(r"router_trace_rank\d+\.jsonl", os.path.basename(trace)) or not os.path.lexists(side):
        return False
    if not lies_in(side, os.path.dirname(side)):  # side is named in the trace's resolved folder
        raise LinksOutside(_outside(side))
    return True


def _outside(side: str) -> str:
    return f"{os.path.basename(side)} links outside the trace's directory; copy the dump itself next to the trace"


def _load(path: str, n_experts: int, top_k: int | None, limits: TraceLimits, keep: set | None) -> dict[str, dict]:
    """The dump's layers (those in `keep` only, when given: each entry's bias becomes a list of floats, and 240
    layers sharing one bias of 16,384 floats built 121 MB and printed 110 MB of JSON)."""
    name = os.path.basename(path)
    opened = open_inside(path, os.path.dirname(path), "Megatron-LM router state dump",  # the file checked: a link
                         "copy the router_state_rank*.pt written with the trace", _outside(path))  # swapped in since
    state = load_pt(path, limits, opened=opened)                                                # is refused
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{name} is not Megatron-LM's router state ({{layer: {{{', '.join(STATE_KEYS)}}}}}); copy "
                         f"the router_state_rank*.pt written with the trace")
    out = {}
    for layer, entry in state.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"{name}: the layers must be integer layer numbers; copy the file written with the trace")
        if not isinstance(entry, dict) or set(entry) != set(STATE_KEYS):
            raise ValueError(f"{name}: layer {layer} must hold exactly {list(STATE_KEYS)}; copy the file written "
                             f"with the trace")
        if keep is None or str(layer) in keep:
            out[str(layer)] = _entry(entry, f"{name}: layer {layer}", n_experts, top_k)
    return out


def _entry(entry: dict, where: str, n_experts: int, top_k: int | None) -> dict:
    weight, bias, score, k = (entry[key] for key in STATE_KEYS)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"{where}: 'weight' must be a float tensor [experts, hidden]")
    if weight.shape[0] != n_experts:
        raise ValueError(f"{where}: the router weight has {weight.shape[0]} experts but the trace has {n_experts}; "
                         f"copy the router state written with this trace (or give the right --n-experts)")
    if bias is not None and (not isinstance(bias, torch.Tensor) or not bias.is_floating_point()
                             or tuple(bias.shape) != (n_experts,)):
        raise ValueError(f"{where}: 'expert_bias' must be None or a float tensor [{n_experts}]")
    if score is not None and (not isinstance(score, str) or not SCORE_NAME.fullmatch(score)):
        raise ValueError(f"{where}: 'score_function' must be None or a name such as \"softmax\" or \"sigmoid\"")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"{where}: 'topk' must be None or an integer >= 1")
    if k is not None and top_k is not None and k != top_k:
        raise ValueError(f"{where}: topk {k} but the trace routes each token to {top_k} experts; copy the router "
                         f"state written with this trace")
    biases = None if bias is None else [float(v) for v in bias.double().tolist()]
    if biases is not None and not all(math.isfinite(v) for v in biases):
        raise ValueError(f"{where}: 'expert_bias' holds non-finite values; copy the file written with the trace")
    digest = hashlib.blake2b(weight.detach().float().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
    return {"score_function": score, "topk": k, "expert_bias": biases, "digest": digest}
