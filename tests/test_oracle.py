"""The engine against the naive float64 oracle (tests/naive.py), for every routing combination."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe import MoEConfig, MoELayer
from naive import PER_EXPERT_COLUMNS, naive_forward

ROUTERS = ("topk", "expert_choice", "hash", "random")
SCORES = ("softmax", "sigmoid")
SUMMARY_KEYS = {"aux_loss", "z_loss", "cv", "max_over_mean", "load_entropy", "dead_fraction",
                "dropped_fraction", "mean_confidence", "tokens", "forward_ms", "nonfinite",
                "nonfinite_output", "demand", "served", "dropped", "active_experts", "capacity",
                "shared_output_rms", "shared_fraction", "topk_margin", "bias_overlap"}
BASE = dict(d_model=12, d_expert=24, n_experts=5, top_k=2)
T_BASE = 30
RTOL, ATOL = 1e-4, 1e-5   # the engine runs in float32


def tokens(T: int, D: int, seed: int = 1234) -> torch.Tensor:
    return torch.randn(T, D, generator=torch.Generator().manual_seed(seed))  # (T, D)


def needs_engine_logits(cfg: MoEConfig) -> bool:
    """Random draws the oracle cannot reproduce: it takes the engine's logits instead."""
    return cfg.router == "random" or cfg.jitter_eps > 0 or cfg.noise_std > 0


def run_both(cfg: MoEConfig, x: torch.Tensor, prepare=None):
    layer = MoELayer(cfg)
    if prepare is not None:
        prepare(layer)
    y, trace = layer(x)
    logits = trace.router_logits if needs_engine_logits(cfg) else None
    ref = naive_forward(layer.state_dict(), cfg, x, router_logits=logits)
    return y, trace, ref


def as_float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    return torch.tensor(np.asarray(value, dtype=np.float64))


def close(actual, expected, what: str, rtol=RTOL, atol=ATOL) -> None:
    torch.testing.assert_close(as_float64(actual), as_float64(expected), rtol=rtol, atol=atol,
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_matches(cfg: MoEConfig, x, y, trace, ref) -> None:
    T, E = x.reshape(-1, x.shape[-1]).shape[0], cfg.n_experts
    assert y.shape == x.shape and y.dtype == x.dtype
    close(y, ref.y, "y")
    close(trace.router_logits.cpu(), ref.router_logits, "router_logits")
    close(trace.probs.cpu(), ref.probs, "probs")
    assert trace.routed.cpu().tolist() == ref.routed, "routed"
    assert trace.served.cpu().tolist() == ref.served, "served"
    close(trace.gates.cpu(), ref.gates, "gates")
    close(trace.contributions.cpu(), ref.contributions, "contributions")
    assert trace.coactivation.cpu().tolist() == ref.coactivation, "coactivation"
    if ref.top_k_index is None:
        assert trace.top_k_index is None and trace.top_k_weights is None
    else:
        assert trace.top_k_index.cpu().tolist() == ref.top_k_index, "top_k_index"
        close(trace.top_k_weights.cpu(), ref.top_k_weights, "top_k_weights")
    assert trace.capacity == ref.capacity
    assert trace.tokens == T

    table = trace.per_expert()
    assert list(table.columns) == list(PER_EXPERT_COLUMNS)
    assert len(table) == E
    for name in ("expert", "demand", "served", "dropped"):
        assert table[name].tolist() == ref.per_expert[name], name
    for name in PER_EXPERT_COLUMNS[4:]:
        close(table[name].to_numpy(dtype=float), ref.per_expert[name], f"per_expert.{name}")

    summary = trace.summary()
    assert set(summary) == SUMMARY_KEYS
    assert all(isinstance(v, float) for v in summary.values()), summary
    assert summary["forward_ms"] > 0
    for key, expected in ref.summary.items():
        close(summary[key], expected, f"summary.{key}")


def grid():
    """Every router × score × capacity × drop policy × normalize_topk that means something."""
    for router in ROUTERS:
        for score in SCORES:
            for cap in (None, 0.5, 1.25):
                # dropless has nothing to drop; expert choice ignores the drop policy and normalize
                policies = ("position",) if cap is None or router == "expert_choice" else ("position", "probs")
                norms = (True,) if router == "expert_choice" else (True, False)
                for policy in policies:
                    for norm in norms:
                        yield pytest.param(router, score, cap, policy, norm,
                                           id=f"{router}-{score}-cap{cap}-{policy}-norm{norm}")


@pytest.mark.parametrize("router,score,capacity,policy,normalize", list(grid()))
def test_routing_grid(router, score, capacity, policy, normalize):
    cfg = MoEConfig(**BASE, router=router, score=score, capacity_factor=capacity,
                    drop_policy=policy, normalize_topk=normalize)
    x = tokens(T_BASE, cfg.d_model)
    assert_matches(cfg, x, *run_both(cfg, x))


KNOBS = {
    "temperature": dict(temperature=0.35),
    "logit_bias": dict(logit_bias=(1.0, -0.5, 0.0, 2.0, -1.0)),
    "expert_bias": dict(expert_bias=(0.0, 0.3, -0.2, 0.0, 0.5)),
    "scaling": dict(routed_scaling_factor=2.5),
    "scaling-unnormalized": dict(routed_scaling_factor=2.5, normalize_topk=False),
    "all": dict(temperature=1.7, logit_bias=(0.5, 0.0, -0.5, 1.0, 0.0),
                expert_bias=(0.1, 0.0, 0.0, -0.1, 0.2), routed_scaling_factor=0.5,
                sparsity_eps=0.05),
}


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("knob", list(KNOBS))
def test_routing_knobs(knob, router, score):
    cfg = MoEConfig(**BASE, router=router, score=score, capacity_factor=1.25,
                    drop_policy="probs", **KNOBS[knob])
    x = tokens(T_BASE, cfg.d_model, seed=7)
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    if router == "random":  # logits = (U(0,1) + logit_bias) / temperature
        bias = torch.tensor(cfg.logit_bias or (0.0,) * cfg.n_experts)
        u = trace.router_logits.cpu() * cfg.temperature - bias
        assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5


SHAPES = [(8, 16, 4, 1, 12), (16, 32, 6, 3, 40), (12, 16, 6, 2, 25), (8, 16, 4, 4, 13),
          (8, 16, 1, 1, 12), (8, 16, 4, 2, 1)]   # K = E; a single expert; a single token


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("D,H,E,K,T", SHAPES)
def test_routing_shapes(D, H, E, K, T, router, score):
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K, router=router, score=score,
                    capacity_factor=1.25, seed=3)
    x = tokens(T, D, seed=T)
    assert_matches(cfg, x, *run_both(cfg, x))


@pytest.mark.parametrize("router", ROUTERS)
def test_idle_expert(router):
    """A hopeless expert 4 stays idle under topk/random: its NaN columns and dead_fraction."""
    cfg = MoEConfig(**BASE, router=router, logit_bias=(0.0, 0.0, 0.0, 0.0, -30.0))
    x = tokens(T_BASE, cfg.d_model)
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    if router in ("topk", "random"):
        assert trace.summary()["dead_fraction"] == pytest.approx(0.2)
        assert math.isnan(trace.per_expert()["specialization"].iloc[4])


@pytest.mark.parametrize("router", ROUTERS)
def test_sharp_router(router):
    """Low temperature: p1/p2 exceeds the confidence cap of 100 for most tokens."""
    cfg = MoEConfig(**BASE, router=router, temperature=0.1, capacity_factor=1.25,
                    drop_policy="probs")
    x = tokens(T_BASE, cfg.d_model)
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    if router != "random":
        assert 50 < ref.summary["mean_confidence"] <= 100


@pytest.mark.parametrize("router", ROUTERS)
def test_batched_input(router):
    """(B, S, D) input: tokens are numbered in flattened order (the hash router sees it)."""
    cfg = MoEConfig(**BASE, router=router, capacity_factor=0.8, drop_policy="probs")
    x = tokens(24, cfg.d_model).reshape(3, 8, cfg.d_model)  # (B, S, D)
    assert_matches(cfg, x, *run_both(cfg, x))


@pytest.mark.parametrize("router", ("topk", "expert_choice", "hash"))
@pytest.mark.parametrize("noise", [dict(jitter_eps=0.2), dict(noise_std=0.5),
                                   dict(jitter_eps=0.1, noise_std=0.3)], ids=str)
def test_noise_downstream(router, noise):
    """Noise cannot be replayed by the oracle: it checks everything downstream of the logits."""
    cfg = MoEConfig(**BASE, router=router, capacity_factor=1.25, **noise)
    x = tokens(T_BASE, cfg.d_model)
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    clean = torch.tensor(naive_forward(MoELayer(cfg).state_dict(), cfg.replace(jitter_eps=0.0, noise_std=0.0),
                                       x).router_logits)
    diff = trace.router_logits.cpu().double() - clean  # (T, E)
    assert diff.abs().max() > 1e-4, "noise was requested but the logits are noise-free"
    if "noise_std" not in noise:
        # jitter multiplies each router input by a factor in [1-eps, 1+eps]
        W = MoELayer(cfg).state_dict()["router.weight"].double()
        bound = cfg.jitter_eps * (x.double().abs() @ W.abs().T) / cfg.temperature  # (T, E)
        assert (diff.abs() <= bound + 1e-5).all()
    elif "jitter_eps" not in noise:
        assert 0.6 * cfg.noise_std < diff.std() < 1.4 * cfg.noise_std


# ---------------------------------------------------------------- real ties

@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("router", ("topk", "expert_choice"))
@pytest.mark.parametrize("capacity", (0.5, 1.25))
def test_identical_tokens(router, score, capacity):
    """Identical tokens tie on every probability: the earlier token must win the capacity."""
    cfg = MoEConfig(**BASE, router=router, score=score, capacity_factor=capacity, drop_policy="probs")
    x = tokens(1, cfg.d_model).expand(T_BASE, cfg.d_model).contiguous()  # (T, D), one row repeated
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    C = cfg.capacity(T_BASE)
    served = trace.served.cpu()
    for e in range(cfg.n_experts):   # an expert that served anyone served exactly tokens 0..C-1
        rows = served[:, e].nonzero().flatten().tolist()
        assert rows == [] or rows == list(range(min(C, T_BASE))), (e, rows)


def _zero_router(layer) -> None:
    with torch.no_grad():
        layer.router.weight.zero_()   # every logit = logit_bias: experts tie as well as tokens


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("router", ("topk", "expert_choice"))
@pytest.mark.parametrize("policy", ("position", "probs"))
@pytest.mark.parametrize("logit_bias", (None, (0.5, 0.0, 0.5, 0.0, 0.5)), ids=("flat", "tied-bias"))
def test_tied_experts(router, score, policy, logit_bias):
    """All logits equal (or equal in groups): the lower expert index and earlier token win."""
    cfg = MoEConfig(**BASE, router=router, score=score, capacity_factor=0.5, drop_policy=policy,
                    logit_bias=logit_bias)
    x = tokens(T_BASE, cfg.d_model)
    y, trace, ref = run_both(cfg, x, prepare=_zero_router)
    assert_matches(cfg, x, y, trace, ref)
    if router == "topk":
        expected = [0, 1] if logit_bias is None else [0, 2]
        assert trace.top_k_index.cpu().tolist() == [expected] * T_BASE


# ---------------------------------------------------------------- the oracle itself

def _random_state(E: int, D: int, H: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"router.weight": torch.randn(E, D, generator=g, dtype=torch.float64),
            "router.expert_bias": torch.zeros(E, dtype=torch.float64),
            "experts.w_gate": torch.randn(E, H, D, generator=g, dtype=torch.float64),
            "experts.w_up": torch.randn(E, H, D, generator=g, dtype=torch.float64),
            "experts.w_down": torch.randn(E, D, H, generator=g, dtype=torch.float64)}


def test_oracle_single_expert_is_dense_ffn():
    state = _random_state(1, 6, 10)
    cfg = MoEConfig(d_model=6, d_expert=10, n_experts=1, top_k=1)
    x = torch.randn(7, 6, dtype=torch.float64)
    dense = F.linear(F.silu(F.linear(x, state["experts.w_gate"][0])) * F.linear(x, state["experts.w_up"][0]),
                     state["experts.w_down"][0])
    ref = naive_forward(state, cfg, x)
    torch.testing.assert_close(ref.y, dense)
    assert math.isnan(ref.summary["mean_confidence"])
    assert ref.summary["aux_loss"] == pytest.approx(1.0)


def test_oracle_hand_worked_capacity():
    """T=4, E=2, K=1, C=ceil(1.0·4·1/2)=2; every token prefers expert 0, token 3 the most."""
    state = _random_state(2, 3, 4)
    logits = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.2, 0.0], [3.0, 0.0]])
    cfg = MoEConfig(d_model=3, d_expert=4, n_experts=2, top_k=1, capacity_factor=1.0)
    x = torch.randn(4, 3, dtype=torch.float64)
    by_position = naive_forward(state, cfg, x, router_logits=logits)
    assert [row[0] for row in by_position.served] == [True, True, False, False]
    by_probs = naive_forward(state, cfg.replace(drop_policy="probs"), x, router_logits=logits)
    assert [row[0] for row in by_probs.served] == [True, False, False, True]
    assert by_probs.per_expert["dropped"] == [2, 0]
    assert by_probs.summary["dropped_fraction"] == 0.5
    p = 1 / (1 + math.exp(-3.0))
    assert by_probs.gates[3][0] == pytest.approx(1.0)   # normalised top-1 weight
    assert by_probs.probs[3][0] == pytest.approx(p)
    # expert choice: each expert takes the 2 tokens with the highest probs in its column
    ec = naive_forward(state, cfg.replace(router="expert_choice"), x, router_logits=logits)
    assert [row[0] for row in ec.served] == [True, False, False, True]
    assert [row[1] for row in ec.served] == [False, True, True, False]
    assert ec.top_k_index is None and ec.per_expert["demand"] == [2, 2]


# ---------------------------------------------------------------- trace fields and devices

def test_trace_fields():
    cfg = MoEConfig(**BASE, capacity_factor=1.25)
    x = tokens(T_BASE, cfg.d_model)
    _, trace = MoELayer(cfg)(x)
    T, E, K = T_BASE, cfg.n_experts, cfg.top_k
    for name in ("router_logits", "probs", "gates", "contributions"):
        tensor = getattr(trace, name)
        assert tensor.shape == (T, E) and tensor.dtype == torch.float32, name
    for name in ("routed", "served"):
        assert getattr(trace, name).shape == (T, E) and getattr(trace, name).dtype == torch.bool
    assert trace.coactivation.shape == (E, E)
    assert trace.top_k_index.shape == (T, K) and not trace.top_k_index.is_floating_point()
    assert trace.top_k_weights.shape == (T, K)
    assert trace.device == "cpu" and trace.forward_ms > 0
    host = trace.cpu()
    assert host.router_logits.device.type == "cpu"
    assert torch.equal(host.served, trace.served)


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@GPU
@pytest.mark.parametrize("router", ROUTERS)
def test_gpu_matches_oracle(router):
    cfg = MoEConfig(**BASE, router=router, capacity_factor=1.25, drop_policy="probs", device="cuda")
    layer = MoELayer(cfg)
    cpu_state = MoELayer(cfg.replace(device="cpu")).state_dict()
    assert all(torch.equal(v.cpu(), cpu_state[k]) for k, v in layer.state_dict().items())
    x = tokens(T_BASE, cfg.d_model).to("cuda")
    y, trace = layer(x)
    assert trace.device.startswith("cuda") and y.device.type == "cuda"
    ref = naive_forward(layer.state_dict(), cfg, x.cpu(),
                        router_logits=trace.router_logits if needs_engine_logits(cfg) else None)
    assert_matches(cfg, x.cpu(), y.cpu(), trace.cpu(), ref)


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("router", ("topk", "expert_choice"))
def test_half_precision_experts_fp32_router(dtype, router):
    """router_dtype="float32": routing equals the oracle's exactly; y only to half precision."""
    cfg = MoEConfig(**BASE, router=router, dtype=dtype, capacity_factor=1.25, drop_policy="probs")
    layer = MoELayer(cfg)
    x = tokens(T_BASE, cfg.d_model).to(cfg.torch_dtype)   # (T, D) in the model dtype
    y, trace = layer(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert trace.router_logits.dtype == torch.float32
    ref = naive_forward(layer.state_dict(), cfg, x)
    close(trace.router_logits, ref.router_logits, "router_logits")
    assert trace.served.cpu().tolist() == ref.served
    close(trace.gates, ref.gates, "gates")
    close(y, ref.y, "y", rtol=3e-2, atol=3e-2)
    # router_dtype="model" runs the router in the half dtype: it still runs and reports
    _, model_trace = MoELayer(cfg.replace(router_dtype="model"))(x)
    assert model_trace.summary()["tokens"] == T_BASE
