"""train-lm --arch deepseek_v3: the DeepSeek-V3 architecture it builds, and the aux-loss-free bias update of a
training step (exactly ±u towards balance, after the step: the loss and the gradients never see it)."""
import copy
import dataclasses

import pytest
import torch

from moe.cli.train_lm import arch_defaults
from moe.hf.lm_arch import bias_routers, capture_selection
from moe.hf.lm_config import LMTrainConfig, check_lm_training_budget, estimate_lm_training_bytes
from moe.hf.lm_train import build_model, evaluate, train_step

TINY = LMTrainConfig(arch="deepseek_v3", hidden=16, d_expert=16, layers=2, heads=2, seq_len=16, curriculum=(16,),
                     batch=4, **arch_defaults("deepseek_v3"))
RATE = 0.25  # a power of two: b + u·sign is exact in float32, so the test can ask for equality


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (TINY.batch, TINY.seq_len), generator=torch.Generator().manual_seed(seed))


def test_the_architecture_is_deepseek_v3_with_groups_a_shared_expert_and_every_layer_moe():
    model = build_model(TINY)
    c = model.config
    assert type(model).__name__ == "DeepseekV3ForCausalLM" and c.model_type == "deepseek_v3"
    assert (c.n_routed_experts, c.n_group, c.topk_group, c.num_experts_per_tok, c.n_shared_experts) == (8, 4, 2, 2, 1)
    assert c.first_k_dense_replace == 0 and all(type(layer.mlp).__name__ == "DeepseekV3MoE" for layer in model.model.layers)
    assert len(bias_routers(model)) == TINY.layers
    assert all(torch.equal(r.e_score_correction_bias, torch.zeros(8)) for r in bias_routers(model))
    assert "e_score_correction_bias" not in " ".join(n for n, _ in model.named_parameters())  # a buffer: no gradient


def _loads_seen_by_the_routers(model, batch) -> list[torch.Tensor]:
    """Selected-token count per expert at each layer, counted token by token from the routers' own output."""
    seen = []
    hooks = [r.register_forward_hook(lambda m, i, out: seen.append(out[2].tolist())) for r in bias_routers(model)]
    with torch.no_grad():
        model(input_ids=batch)
    for h in hooks:
        h.remove()
    loads = []
    for rows in seen:
        count = [0] * 8
        for row in rows:
            for e in row:
                count[e] += 1
        loads.append(torch.tensor(count, dtype=torch.float32))
    return loads


def test_one_step_moves_each_bias_by_exactly_u_towards_the_underloaded_experts():
    model = build_model(TINY)
    batch = _batch()
    loads = _loads_seen_by_the_routers(model, batch)  # the step's forward routes the same (same weights and bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights unchanged: only the bias rule moves anything
    with capture_selection(model) as picks:
        train_step(model, opt, batch, picks, RATE)
        assert all(seen == [] for seen in picks)  # consumed by the update
    for router, load in zip(bias_routers(model), loads):
        expected = torch.tensor([RATE if x < load.mean() else -RATE if x > load.mean() else 0.0 for x in load])
        assert torch.equal(router.e_score_correction_bias, expected), (load, router.e_score_correction_bias)
        assert load.sum() == TINY.batch * TINY.seq_len * TINY.top_k and (expected != 0).any()
    # the bias steers selection: the same batch through the same weights now routes differently
    assert [x.tolist() for x in _loads_seen_by_the_routers(model, batch)] != [x.tolist() for x in loads]


def test_the_bias_update_changes_neither_the_loss_nor_the_gradients_nor_the_weight_step():
    with_rule, without = build_model(TINY), build_model(TINY)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (with_rule, without)]
    grads, losses = [], []
    for model, opt, rate in ((with_rule, opts[0], RATE), (without, opts[1], 0.0)):
        with capture_selection(model) as picks:
            losses.append(float(train_step(model, opt, _batch(), picks, rate).loss.detach()))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all(torch.equal(a, b) for a, b in zip(with_rule.parameters(), without.parameters()))
    assert not torch.equal(bias_routers(with_rule)[0].e_score_correction_bias,
                           bias_routers(without)[0].e_score_correction_bias)


def test_outside_capture_the_model_keeps_no_hooks_and_mixtral_has_no_bias_rule():
    model = build_model(TINY)
    with capture_selection(model):
        pass
    assert all(not r._forward_hooks for r in bias_routers(model))
    mixtral = build_model(dataclasses.replace(TINY, arch="mixtral", aux_coef=0.02))
    before = copy.deepcopy(mixtral.state_dict())
    opt = torch.optim.SGD(mixtral.parameters(), lr=0.0)
    with capture_selection(mixtral) as picks:
        assert picks == []
        train_step(mixtral, opt, _batch(), picks, RATE)
    assert all(torch.equal(before[k], v) for k, v in mixtral.state_dict().items())


def test_evaluate_counts_the_routers_own_selection():
    model = build_model(dataclasses.replace(TINY, seed=3))
    for r in bias_routers(model):  # a bias that changes the selection: the logits' top-k would be wrong
        r.e_score_correction_bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, 0, 0.9, 0.9]))
    ids = _batch().reshape(-1)
    got = evaluate(model, ids, TINY.seq_len)
    loads = _loads_seen_by_the_routers(model, ids.view(-1, TINY.seq_len))
    assert got["load_max_over_mean"] == pytest.approx([float(x.max() / x.mean()) for x in loads])
    assert all(x[6] == x[7] == TINY.batch * TINY.seq_len for x in loads)  # both biased experts take every token


def test_the_config_refuses_groups_that_cannot_serve_top_k_and_records_only_its_own_fields():
    with pytest.raises(ValueError, match="cannot serve top-2"):
        dataclasses.replace(TINY, n_group=8)  # one expert per group
    with pytest.raises(ValueError, match="--arch 'llama'"):
        dataclasses.replace(TINY, arch="llama")
    assert {"n_group", "bias_rate", "shared_experts"} <= set(TINY.report()) and "aux_coef" not in TINY.report()
    mixtral = LMTrainConfig().report()
    assert mixtral["aux_coef"] == 0.02 and "bias_rate" not in mixtral and mixtral["arch"] == "mixtral"
    assert arch_defaults("mixtral") == {} and TINY.aux_coef == 0.0


def test_the_memory_estimate_counts_the_shared_expert():
    deepseek = dataclasses.replace(LMTrainConfig(), arch="deepseek_v3", aux_coef=0.0)
    a, b = estimate_lm_training_bytes(LMTrainConfig()), estimate_lm_training_bytes(deepseek)
    assert b["weights"] - a["weights"] == 4 * 4 * 3 * 128 * 128  # 4 layers × one (3·D·H) shared FFN, float32
    assert b["training"] > a["training"]
    check_lm_training_budget(deepseek, budget=4 * 1024 ** 3)


def test_the_cli_builds_the_arch_it_is_given_and_mixtral_by_default(tmp_path, monkeypatch, capsys):
    from moe.cli.main import main

    seen = []
    monkeypatch.setattr("moe.cli.train_lm.train_lm", lambda cfg, out, progress: seen.append(cfg) or {})
    monkeypatch.setattr("moe.cli.train_lm.format_report", lambda report: "trained")
    assert main(["train-lm", "--arch", "deepseek_v3", "--out", str(tmp_path / "d"), "--steps", "3"]) == 0
    assert main(["train-lm", "--out", str(tmp_path / "m"), "--steps", "3"]) == 0
    assert [(c.arch, c.aux_coef, c.steps) for c in seen] == [("deepseek_v3", 0.0, 3), ("mixtral", 0.02, 3)]
    capsys.readouterr()
    assert main(["train-lm", "--arch", "llama", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --arch: invalid choice: 'llama'" in err[0]


def test_evaluate_counts_mixtrals_top_k_of_its_router_logits():
    model = build_model(dataclasses.replace(TINY, arch="mixtral", aux_coef=0.02))
    ids = _batch().reshape(-1)
    got = evaluate(model, ids, TINY.seq_len)
    with torch.no_grad():
        logits = model(input_ids=ids.view(-1, TINY.seq_len), output_router_logits=True).router_logits
    expected = []
    for layer in logits:  # (T, E)
        count = [0] * 8
        for row in layer.tolist():
            for e in sorted(range(8), key=lambda e: -row[e])[:TINY.top_k]:
                count[e] += 1
        expected.append(max(count) / (sum(count) / 8))
    assert got["load_max_over_mean"] == pytest.approx(expected)


def test_the_pages_top1_is_the_routers_highest_weighted_selected_expert_as_the_cards_nmi_reads_it():
    """For the bundled DeepSeek-style model the highest biased score (selection) and the highest weight (the unbiased
    score) disagree on some tokens: ModelRun.top1 is the highest weight among the selected, as selected_top1 reads the
    HF router's own (index, weights) output."""
    from moe.hf.instrument import run_model
    from moe.hf.lm_arch import selected_top1
    from moe.hf.load import BUNDLED_MODELS, load_model

    loaded = load_model(BUNDLED_MODELS["pydoc-deepseek"])
    ids = loaded.tokenizer("def area(r):\n    return 3.14159 * r * r  # the area of a circle\n" * 3,
                           return_tensors="pt")["input_ids"][0]
    run = run_model(loaded.model, ids)
    with capture_selection(loaded.model) as picks, torch.no_grad():
        loaded.model(input_ids=ids[None])
        first_selected = torch.stack([torch.cat([i for i, _ in seen])[:, 0] for seen in picks])  # (layers, T)
        theirs = selected_top1(picks)
    assert torch.equal(run.top1(), theirs)
    assert (first_selected != theirs).any()  # the two readings differ here: the test can tell them apart
