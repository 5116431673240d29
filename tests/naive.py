"""A naive, per-token float64 oracle for the MoE layer, written straight from the definitions.

It shares no code with `moe/` (only reads the config's fields): routing, capacity and every
statistic are plain Python loops over tokens and experts; the only tensor maths is the float64
mat-vec of one expert on one token. Slow on purpose — use tiny sizes.

Random draws ("random" router, `jitter_eps`, `noise_std`) cannot be reproduced here, so for those
configs pass the engine's `router_logits` and the oracle checks everything downstream of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

HASH_MULT = 2654435761
PER_EXPERT_COLUMNS = ("expert", "demand", "served", "dropped", "load_share", "utilization",
                      "activation_sparsity", "output_rms", "mean_gate", "contribution",
                      "specialization", "topk_margin", "bias_overlap")
NAN = float("nan")


@dataclass
class NaiveTrace:
    """Everything the oracle computes; lists of Python floats/bools, (T, E) as rows of E."""
    y: torch.Tensor                      # (T, D) float64, flattened tokens
    router_logits: list[list[float]]     # (T, E)
    probs: list[list[float]]             # (T, E)
    routed: list[list[bool]]             # (T, E)
    served: list[list[bool]]             # (T, E)
    gates: list[list[float]]             # (T, E)
    contributions: list[list[float]]     # (T, E)
    coactivation: list[list[int]]        # (E, E)
    top_k_index: list[list[int]] | None  # (T, K), None for expert_choice
    top_k_weights: list[list[float]] | None
    capacity: int | None
    per_expert: dict[str, list] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- scalar maths

def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    total = sum(exps)
    return [v / total for v in exps]


def _sigmoid(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _logsumexp(row: list[float]) -> float:
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def _act(name: str, v: float, limit: float) -> float:
    """The activation on one number (for gpt_oss: the gate part g·σ(1.702·g), g = min(v, limit))."""
    if name == "silu":
        return v * _sigmoid(v)
    if name == "gelu":
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    if name == "relu":
        return v if v > 0 else 0.0
    g = min(v, limit)
    return g * _sigmoid(1.702 * g)


def _ffn(cfg, w_gate, w_up, w_down, b_gate, b_up, b_down, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = w_down @ h + b_down with h from the definitions of `activation` and `gated`; (y (D,), h (H,))."""
    up = (w_up @ x).tolist()                                    # (H,)
    if b_up is not None:
        up = [u + b for u, b in zip(up, b_up.tolist())]
    if not cfg.gated:
        h = [_act(cfg.activation, u, cfg.swiglu_limit) for u in up]
    else:
        gate = (w_gate @ x).tolist()                            # (H,)
        if b_gate is not None:
            gate = [g + b for g, b in zip(gate, b_gate.tolist())]
        if cfg.activation == "gpt_oss":
            lim = cfg.swiglu_limit
            up = [max(-lim, min(lim, u)) + 1.0 for u in up]
        h = [_act(cfg.activation, g, cfg.swiglu_limit) * u for g, u in zip(gate, up)]
    h = torch.tensor(h, dtype=torch.float64)                    # (H,)
    y = w_down @ h                                              # (D,)
    return (y if b_down is None else y + b_down), h


def _expert_forward(state: dict, cfg, e: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y_e(x) of routed expert e; returns (y (D,), h (H,))."""
    def get(name):
        return state[name][e] if name in state else None
    return _ffn(cfg, get("experts.w_gate"), state["experts.w_up"][e], state["experts.w_down"][e],
                get("experts.b_gate"), get("experts.b_up"), get("experts.b_down"), x)


def _shared_forward(state: dict, cfg, x: torch.Tensor) -> torch.Tensor:
    """The shared FFN on one token, times σ(gate·x) when shared_gate; (D,)."""
    s, _ = _ffn(cfg, state.get("shared.w_gate"), state["shared.w_up"], state["shared.w_down"], None, None, None, x)
    if cfg.shared_gate:
        s = s * _sigmoid(float(state["shared.gate.weight"][0] @ x))
    return s


def _is_near_zero(cfg, h: list[float]) -> list[bool]:
    """absolute: |v| < eps; relative: |v| <= eps · sqrt(mean of v² over the row)."""
    if cfg.sparsity_mode == "absolute":
        return [abs(v) < cfg.sparsity_eps for v in h]
    rms = math.sqrt(sum(v * v for v in h) / len(h))
    return [abs(v) <= cfg.sparsity_eps * rms for v in h]


def _capacity(cfg, T: int) -> int | None:
    factor = cfg.capacity_factor
    if factor is None:
        if cfg.router != "expert_choice":
            return None
        factor = 1.0
    return min(T, math.ceil(factor * T * cfg.top_k / cfg.n_experts))


# ---------------------------------------------------------------- routing

def _logits(state: dict, cfg, xs: torch.Tensor) -> list[list[float]]:
    T, D = xs.shape
    W = state["router.weight"].tolist()         # (E, D)
    rows = xs.tolist()
    bias = cfg.logit_bias or (0.0,) * cfg.n_experts
    out = []
    for t in range(T):
        row = []
        for e in range(cfg.n_experts):
            dot = sum(rows[t][d] * W[e][d] for d in range(D))
            row.append((dot + bias[e]) / cfg.temperature)
        out.append(row)
    return out


def _groups_kept(cfg, selection: list[float]) -> set[int]:
    """DeepSeek-V3: the topk_group groups whose two best selection scores sum highest (lower group on ties)."""
    size = cfg.n_experts // cfg.n_group
    group_score = []
    for g in range(cfg.n_group):
        members = sorted(selection[g * size:(g + 1) * size], reverse=True)
        group_score.append(sum(members[:2]))
    ranked = sorted(range(cfg.n_group), key=lambda g: (-group_score[g], g))
    return set(ranked[:cfg.topk_group])


def _choose_topk(cfg, scores: list[float], bias: list[float], K: int) -> list[int]:
    """The K experts with the highest score + bias among the kept groups; on equal values the lower index wins."""
    selection = [scores[e] + bias[e] for e in range(len(scores))]
    allowed = range(len(scores))
    if cfg.n_group > 1:
        kept = _groups_kept(cfg, selection)
        size = cfg.n_experts // cfg.n_group
        allowed = [e for e in allowed if e // size in kept]
    order = sorted(allowed, key=lambda e: (-selection[e], e))
    return order[:K]


def _route_topk_family(cfg, T, scores, probs, expert_bias):
    """topk / random / hash: returns routed (T,E), weight (T,E), top_k_index, top_k_weights."""
    E, K = cfg.n_experts, cfg.top_k
    routed = [[False] * E for _ in range(T)]
    weight = [[0.0] * E for _ in range(T)]
    index, weights = [], []
    for t in range(T):
        if cfg.router == "hash":
            chosen = [((t * HASH_MULT) % 2**32 + j) % E for j in range(K)]
            w = [(1.0 / K if cfg.normalize_topk else 1.0) for _ in chosen]
        else:
            chosen = _choose_topk(cfg, scores[t], expert_bias, K)
            w = [scores[t][e] for e in chosen]          # the unbiased scores
            if cfg.normalize_topk:
                total = sum(w)
                w = [v / total for v in w]
        w = [v * cfg.routed_scaling_factor for v in w]
        for e, v in zip(chosen, w):
            routed[t][e] = True
            weight[t][e] = v
        index.append(chosen)
        weights.append(w)
    return routed, weight, index, weights


def _keep_tokens(candidates: list[int], probs_col: list[float], C: int, by_probs: bool) -> set[int]:
    """The C tokens an expert keeps: in token order, or by highest probs (earlier token on ties)."""
    if by_probs:
        candidates = sorted(candidates, key=lambda t: (-probs_col[t], t))
    return set(candidates[:C])


def _sequences(T: int, S: int) -> list[list[int]]:
    """Token indices of each sequence of S tokens (one sequence when capacity is per batch)."""
    return [list(range(start, start + S)) for start in range(0, T, S)]


def _apply_capacity(cfg, T, routed, probs, C, S):
    E = cfg.n_experts
    served = [[routed[t][e] for e in range(E)] for t in range(T)]
    if C is None:
        return served
    for seq in _sequences(T, S):
        for e in range(E):
            candidates = [t for t in seq if routed[t][e]]      # token order
            keep = _keep_tokens(candidates, [probs[t][e] for t in range(T)], C,
                                cfg.drop_policy == "probs")
            for t in candidates:
                served[t][e] = t in keep
    return served


def _route_expert_choice(cfg, T, probs, C, S):
    E = cfg.n_experts
    routed = [[False] * E for _ in range(T)]
    weight = [[0.0] * E for _ in range(T)]
    for seq in _sequences(T, S):
        for e in range(E):
            for t in _keep_tokens(seq, [probs[t][e] for t in range(T)], C, True):
                routed[t][e] = True
                weight[t][e] = probs[t][e] * cfg.routed_scaling_factor
    return routed, weight


# ---------------------------------------------------------------- the oracle

def naive_forward(state: dict, cfg, x: torch.Tensor,
                  router_logits: torch.Tensor | None = None) -> NaiveTrace:
    """Run the layer described by `state` (a state dict) and `cfg` on x, token by token in float64.

    router_logits: pass the engine's (T, E) logits for configs with random draws (router
    "random", jitter_eps, noise_std); otherwise leave None and the oracle computes them.
    """
    state = {k: v.detach().to("cpu", torch.float64) for k, v in state.items()}
    xs = x.detach().to("cpu", torch.float64).reshape(-1, x.shape[-1])   # (T, D)
    T, D = xs.shape
    E = cfg.n_experts
    if router_logits is None:
        logits = _logits(state, cfg, xs)
    else:
        logits = router_logits.detach().to("cpu", torch.float64).reshape(T, E).tolist()

    if cfg.score == "softmax":
        probs = [_softmax(row) for row in logits]
        scores = probs
    else:
        scores = [[_sigmoid(v) for v in row] for row in logits]
        probs = [[v / sum(row) for v in row] for row in scores]

    # capacity_scope="sequence": a (B, S, D) input is B sequences of S tokens, each with its own C
    S = x.shape[1] if cfg.capacity_scope == "sequence" and x.dim() == 3 else T
    C = _capacity(cfg, S)
    index = weights = None
    if cfg.router == "expert_choice":
        routed, weight = _route_expert_choice(cfg, T, probs, C, S)
        served = routed
    else:
        expert_bias = state["router.expert_bias"].tolist()
        routed, weight, index, weights = _route_topk_family(cfg, T, scores, probs, expert_bias)
        served = _apply_capacity(cfg, T, routed, probs, C, S)
    gates = [[weight[t][e] if served[t][e] else 0.0 for e in range(E)] for t in range(T)]

    # expert outputs, token by token, only where served
    y = torch.zeros(T, D, dtype=torch.float64)
    outputs, hiddens = {}, {}
    contributions = [[0.0] * E for _ in range(T)]
    for t in range(T):
        for e in range(E):
            if not served[t][e]:
                continue
            ye, h = _expert_forward(state, cfg, e, xs[t])
            outputs[t, e], hiddens[t, e] = ye, h
            y[t] += gates[t][e] * ye
            contributions[t][e] = math.sqrt(sum((gates[t][e] * v) ** 2 for v in ye.tolist()))

    shared_out = None
    if cfg.shared_experts > 0:
        shared_out = [_shared_forward(state, cfg, xs[t]) for t in range(T)]
    routed_out = y.clone()
    for t in range(T):
        if shared_out is not None:
            y[t] += shared_out[t]

    coactivation = [[sum(1 for t in range(T) if served[t][i] and served[t][j]) for j in range(E)]
                    for i in range(E)]
    trace = NaiveTrace(y=y.reshape(x.shape), router_logits=logits, probs=probs, routed=routed,
                       served=served, gates=gates, contributions=contributions,
                       coactivation=coactivation, top_k_index=index, top_k_weights=weights,
                       capacity=C)
    trace.per_expert = _per_expert(cfg, T, trace, outputs, hiddens)
    trace.summary = _summary(cfg, T, trace)
    trace.summary.update(_shared_summary(cfg, routed_out, shared_out))
    return trace


def _shared_summary(cfg, routed: torch.Tensor, shared: list | None) -> dict[str, float]:
    """shared_output_rms = sqrt(mean of s² over tokens and D); shared_fraction = Σ‖s_t‖ / (Σ‖s_t‖ + Σ‖r_t‖)."""
    if shared is None:
        return {"shared_output_rms": NAN, "shared_fraction": NAN}
    T, D = routed.shape
    squares = [v * v for s in shared for v in s.tolist()]
    s_norms = [math.sqrt(sum(v * v for v in s.tolist())) for s in shared]
    r_norms = [math.sqrt(sum(v * v for v in routed[t].tolist())) for t in range(T)]
    return {"shared_output_rms": math.sqrt(sum(squares) / (T * D)),
            "shared_fraction": sum(s_norms) / (sum(s_norms) + sum(r_norms))}


def _per_expert(cfg, T, tr: NaiveTrace, outputs, hiddens) -> dict[str, list]:
    E, K = cfg.n_experts, cfg.top_k
    demand = [sum(1 for t in range(T) if tr.routed[t][e]) for e in range(E)]
    served = [sum(1 for t in range(T) if tr.served[t][e]) for e in range(E)]
    total_served = sum(served)
    # mu: mean of y_e'(x_t) over all served assignments (t, e')
    all_outputs = list(outputs.values())
    mu = sum(all_outputs) / len(all_outputs) if all_outputs else None
    cols = {name: [] for name in PER_EXPERT_COLUMNS}
    margins, unbiased = _margins(cfg, tr.probs), _unbiased_sets(cfg, tr.probs)
    for e in range(E):
        toks = [t for t in range(T) if tr.served[t][e]]
        mine = [margins[t] for t in range(T) if tr.routed[t][e]]
        cols["topk_margin"].append(sum(mine) / len(mine) if mine else NAN)
        picks = [t for t in range(T) if e in unbiased[t]]
        kept = [t for t in picks if tr.routed[t][e]]
        cols["bias_overlap"].append(len(kept) / len(picks) if picks and _overlap_applies(cfg) else NAN)
        cols["expert"].append(e)
        cols["demand"].append(demand[e])
        cols["served"].append(served[e])
        cols["dropped"].append(demand[e] - served[e])
        cols["load_share"].append(served[e] / total_served)
        cols["utilization"].append(served[e] / (T * K / E))
        cols["contribution"].append(sum(tr.contributions[t][e] for t in range(T)))
        if not toks:
            for name in ("activation_sparsity", "output_rms", "mean_gate", "specialization"):
                cols[name].append(NAN)
            continue
        small = sum(sum(_is_near_zero(cfg, hiddens[t, e].tolist())) for t in toks)
        cols["activation_sparsity"].append(small / (len(toks) * cfg.d_expert))
        squares = [v * v for t in toks for v in outputs[t, e].tolist()]
        cols["output_rms"].append(math.sqrt(sum(squares) / len(squares)))
        cols["mean_gate"].append(sum(tr.gates[t][e] for t in toks) / len(toks))
        mu_e = sum(outputs[t, e] for t in toks) / len(toks)
        cos = float(mu_e @ mu) / (math.sqrt(float(mu_e @ mu_e)) * math.sqrt(float(mu @ mu)))
        cols["specialization"].append(1.0 - cos)
    return cols


def _margins(cfg, probs) -> list[float]:
    """Per token: (p_K − p_(K+1)) / p_K over the token's probs sorted high to low; NaN when K = E."""
    K, out = cfg.top_k, []
    for row in probs:
        ranked = sorted(row, reverse=True)
        if K >= len(row):
            out.append(NAN)
        else:
            out.append((ranked[K - 1] - ranked[K]) / ranked[K - 1] if ranked[K - 1] > 0 else 0.0)
    return out


def _unbiased_sets(cfg, probs) -> list[set[int]]:
    """Per token: the K experts with the highest probs, no bias, no groups (lower index on ties)."""
    return [set(sorted(range(len(row)), key=lambda e: (-row[e], e))[:cfg.top_k]) for row in probs]


def _overlap_applies(cfg) -> bool:
    """bias_overlap compares with a choice made from the scores: not for hash or expert_choice."""
    return cfg.router not in ("hash", "expert_choice")


def _summary(cfg, T, tr: NaiveTrace) -> dict[str, float]:
    E, K = cfg.n_experts, cfg.top_k
    pe = tr.per_expert
    demand, served, dropped = pe["demand"], pe["served"], pe["dropped"]
    total_demand = sum(demand)
    P = [sum(tr.probs[t][e] for t in range(T)) / T for e in range(E)]
    f = [demand[e] / (T * K) for e in range(E)]
    mean_demand = total_demand / E
    std_demand = math.sqrt(sum((d - mean_demand) ** 2 for d in demand) / E)   # population
    shares = [d / total_demand for d in demand]
    entropy = -sum(s * math.log(s) for s in shares if s > 0)
    confidences = []
    for row in tr.probs:
        if E == 1:
            break
        p1, p2 = sorted(row, reverse=True)[:2]
        confidences.append(100.0 if p2 == 0 else min(p1 / p2, 100.0))
    return {
        "aux_loss": E * sum(f[e] * P[e] for e in range(E)),
        "z_loss": sum(_logsumexp(row) ** 2 for row in tr.router_logits) / T,
        "cv": std_demand / mean_demand,
        "max_over_mean": max(demand) / mean_demand,
        "load_entropy": math.exp(entropy) / E,
        "dead_fraction": sum(1 for s in served if s == 0) / E,
        "dropped_fraction": sum(dropped) / total_demand,
        "mean_confidence": sum(confidences) / len(confidences) if confidences else NAN,
        "tokens": float(T),
        "nonfinite": float(sum(1 for row in tr.router_logits for v in row if not math.isfinite(v))),
        "demand": float(total_demand),
        "served": float(sum(served)),
        "dropped": float(sum(dropped)),
        "active_experts": float(sum(1 for s in served if s > 0)),
        "capacity": NAN if tr.capacity is None else float(tr.capacity),
        "topk_margin": sum(_margins(cfg, tr.probs)) / T,
        "bias_overlap": (sum(1 for t, chosen in enumerate(_unbiased_sets(cfg, tr.probs)) for e in chosen
                             if tr.routed[t][e]) / (T * K)) if _overlap_applies(cfg) else NAN,
    }
