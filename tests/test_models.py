"""moe.hf.instrument: every sparse MoE block runs through the engine, sharing the model's weights, logits unchanged."""
import copy

import pytest
import torch

from moe.hf.instrument import ADAPTERS, EngineBlock, instrument, run_model, supported_message
from tests.model_support import VOCAB, tiny_model

CASES = [("mixtral", True, 2), ("qwen3_moe", True, 3), ("qwen3_moe", False, 2), ("olmoe", True, 2),
         ("olmoe", False, 4), ("qwen2_moe", True, 2), ("qwen2_moe", False, 2), ("deepseek_v3", True, 3),
         ("deepseek_v3", False, 2), ("gpt_oss", True, 2), ("ernie4_5_moe", True, 2)]
FIRST_MOE = {"deepseek_v3": 1}  # DeepSeek-V3's first_k_dense_replace=1: layer 0 is a dense MLP


def _ids(n=40, seed=1):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family,norm,layers", CASES)
def test_instrumented_logits_equal_the_plain_model(family, norm, layers):
    plain = tiny_model(family, layers, norm)
    model = copy.deepcopy(plain)
    moe_layers = list(range(FIRST_MOE.get(family, 0), layers))
    assert instrument(model) == moe_layers
    ids = _ids()
    with torch.inference_mode():
        expected = plain(input_ids=ids[None]).logits[0]  # (S, V)
    run = run_model(model, ids)
    assert run.layers == moe_layers and len(run.traces) == len(moe_layers) and not run.routing_only
    rel = (run.logits - expected).abs().max() / expected.abs().max()
    assert rel < 1e-4
    # the traces saw the model's own routing: HF's router picks the same top-k at every layer
    assert all(t.tokens == ids.numel() for t in run.traces)


@pytest.mark.parametrize("family,norm,layers", CASES[:2])
def test_trace_routing_matches_the_hf_router(family, norm, layers):
    model = tiny_model(family, layers, norm)
    plain = copy.deepcopy(model)
    instrument(model)
    ids = _ids()
    with torch.inference_mode():
        out = plain(input_ids=ids[None], output_router_logits=True)
    run = run_model(model, ids)
    for hf_logits, trace in zip(out.router_logits, run.traces):
        assert torch.allclose(trace.router_logits, hf_logits.float(), atol=1e-5)
        hf_top = torch.topk(hf_logits.float().softmax(-1), 2, dim=-1).indices
        assert torch.equal(trace.top_k_index.sort(dim=1).values, hf_top.sort(dim=1).values)


def test_engine_shares_the_model_weights_without_copy():
    model = tiny_model("mixtral")
    instrument(model)
    block = model.model.layers[0].mlp
    assert isinstance(block, EngineBlock)
    experts, engine = block.block.experts, block.engine
    H = experts.intermediate_dim
    base = experts.gate_up_proj
    row = base.stride(1) * base.element_size()
    assert engine.experts.w_gate.data_ptr() == base.data_ptr()
    assert engine.experts.w_up.data_ptr() == base.data_ptr() + H * row
    assert engine.experts.w_down.data_ptr() == experts.down_proj.data_ptr()
    assert engine.router.weight is block.block.gate.weight
    # an in-place change of the model's weight is seen by the engine (a view, not a snapshot)
    with torch.no_grad():
        experts.gate_up_proj[0, H, 0] = 123.0
    assert engine.experts.w_up[0, 0, 0].item() == 123.0


def test_outside_a_run_the_instrumented_model_is_the_plain_model():
    plain = tiny_model("olmoe")
    model = copy.deepcopy(plain)
    instrument(model)
    ids = _ids()
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids[None]).logits, plain(input_ids=ids[None]).logits)


def test_instrument_is_idempotent_and_keeps_dense_layers():
    model = tiny_model("qwen3_moe", layers=3)
    model.model.layers[1].mlp = torch.nn.Identity()  # a dense layer in the middle is left alone
    assert instrument(model) == [0, 2]
    assert instrument(model) == [0, 2]
    assert not isinstance(model.model.layers[0].mlp.block, EngineBlock)


def test_pooled_hf_aux_equals_transformers_load_balancing_loss():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = tiny_model("mixtral", layers=3)
    plain = copy.deepcopy(model)
    instrument(model)
    ids = _ids(64)
    with torch.inference_mode():
        out = plain(input_ids=ids[None], output_router_logits=True)
    expected = float(load_balancing_loss_func(out.router_logits, 8, 2))
    run = run_model(model, ids)
    assert run.pooled_hf_aux() == pytest.approx(expected, rel=1e-5)


def test_token_loss_is_the_next_token_cross_entropy():
    model = tiny_model("mixtral")
    instrument(model)
    ids = _ids(12)
    run = run_model(model, ids)
    logp = run.logits.log_softmax(-1)
    naive = torch.tensor([-logp[s, ids[s + 1]] for s in range(11)])
    assert torch.allclose(run.token_loss(), naive, atol=1e-5)


def test_unsupported_families_are_refused_naming_the_supported_ones():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="supported families: mixtral, qwen3_moe, olmoe, qwen2_moe, deepseek_v3, "
                                         "gpt_oss, ernie4_5_moe"):
        instrument(model)
    assert "'jamba'" in supported_message("jamba")
    assert set(ADAPTERS) == {"mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss", "ernie4_5_moe"}


def test_run_model_refuses_an_uninstrumented_model_and_empty_input():
    model = tiny_model("mixtral")
    with pytest.raises(ValueError, match="instrument"):
        run_model(model, _ids())
    instrument(model)
    with pytest.raises(ValueError, match="non-empty"):
        run_model(model, torch.tensor([], dtype=torch.long))


def test_a_routing_only_adapter_records_the_routers_output_and_keeps_the_logits():
    import dataclasses

    from moe.hf.instrument import LayerRouting, collect

    plain = tiny_model("mixtral", layers=2)
    model = copy.deepcopy(plain)
    routing_only = dataclasses.replace(ADAPTERS["mixtral"], exact=False)
    assert instrument(model, routing_only) == [0, 1]
    ids = _ids()
    with torch.inference_mode():
        expected = plain(input_ids=ids[None], output_router_logits=True)
        with collect() as sink:
            logits = model(input_ids=ids[None]).logits
    assert torch.equal(logits, expected.logits)  # the model's own blocks ran
    assert [i for i, _ in sink] == [0, 1] and all(isinstance(r, LayerRouting) for _, r in sink)
    for (_, record), hf_logits in zip(sink, expected.router_logits):
        assert torch.equal(record.router_logits, hf_logits.float())
        assert record.top_k_index.shape == (ids.numel(), 2) and record.config.n_experts == 8


def test_run_model_turns_routing_records_into_traces_or_says_what_is_missing():
    import dataclasses
    import importlib.util

    model = tiny_model("mixtral", layers=2)
    instrument(model, dataclasses.replace(ADAPTERS["mixtral"], exact=False))
    if importlib.util.find_spec("moe.from_routing") is None:  # issue #9 not merged into this build
        with pytest.raises(ValueError, match="trace_from_routing"):
            run_model(model, _ids())
        return
    run = run_model(model, _ids())
    assert run.routing_only == [0, 1] and len(run.traces) == 2
