"""Recording a training run (moe.record): it changes nothing, counts exactly what the family routed, numbers steps
as given, leaves evaluation out, and writes a routing log the report and the Runs page read.

Every expected count here comes from a computation that shares no code with the recorder: top-k of the router
logits the model returns (`output_router_logits=True`), the ids the block hands its experts, the engine's router.
"""
import io
import json
import os
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

from model_support import tiny_model
from moe.cli.main import main
from moe.hf.adapters import ADAPTERS, adapter_for, engine_config, engine_layer
from moe.record import MoeScopeCallback, RoutingRecorder
from moe.record.recorder import moe_blocks
from moe.traces.store_read import read_store

K, E = 2, 8


def _batch(seed: int, rows: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, 257, (rows, seq), generator=torch.Generator().manual_seed(seed))  # (B, S)


def _train_forward(model, ids: torch.Tensor, **kw):
    out = model(input_ids=ids, labels=ids, **kw)
    out.loss.backward()
    return out


def _expert_inputs(model):
    """Hooks on every block's experts: the (T, K) ids and weights the block itself hands them, per layer position."""
    seen: dict[int, list] = {}
    handles = []
    for pos, (_, block) in enumerate(moe_blocks(model, adapter_for(model.config.model_type))):
        def grab(module, args, kwargs, pos=pos):
            seen.setdefault(pos, []).append((args[1].detach().clone(), args[2].detach().clone()))
        handles.append(block.experts.register_forward_pre_hook(grab, with_kwargs=True))
    return seen, handles


# --- it changes nothing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_the_loss_and_every_gradient_are_identical_with_and_without_the_recorder(tmp_path, family):
    plain, watched = tiny_model(family).train(), tiny_model(family).train()
    ids = _batch(1)
    loss_plain = _train_forward(plain, ids).loss
    with RoutingRecorder(watched, str(tmp_path / "log"), tokens=True) as rec:
        loss_watched = _train_forward(watched, ids).loss
        assert rec.step_end(1)  # it did record this forward
    assert torch.equal(loss_plain, loss_watched)
    grads = dict(plain.named_parameters())
    for name, p in watched.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, grads[name].grad), name
    assert all(not getattr(block, adapter_for(family).router)._forward_hooks
               for _, block in moe_blocks(watched, adapter_for(family)))  # close() removed the hooks


# --- exact counts -------------------------------------------------------------------------------------------

def _top_k_counts(router_logits) -> np.ndarray:
    """(L, E) from each layer's (T, E) logits: the K largest per token (float64, no torch top-k), counted."""
    rows = []
    for logits in router_logits:
        lg = logits.detach().double().numpy()
        top = np.argsort(-lg, axis=1, kind="stable")[:, :K]  # (T, K)
        rows.append(np.bincount(top.ravel(), minlength=E))
    return np.stack(rows)


def test_counts_per_step_equal_top_k_of_output_router_logits_with_gradient_accumulation(tmp_path):
    model = tiny_model("mixtral", layers=3).train()
    for _, block in moe_blocks(model, adapter_for("mixtral")):
        block.gate.weight.requires_grad_(False)  # the router frozen: the rest of the model trains
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    expected = {}
    with RoutingRecorder(model, str(tmp_path / "log")) as rec:
        for step in (1, 2, 3):
            total = np.zeros((3, E), np.int64)
            for micro, rows in enumerate((2, 1, 3)):  # three forwards of unequal sizes make one optimizer step
                out = _train_forward(model, _batch(10 * step + micro, rows), output_router_logits=True)
                total += _top_k_counts(out.router_logits)
            opt.step()
            opt.zero_grad()
            rec.step_end(step)
            expected[step] = total
    log = read_store(str(tmp_path / "log"))
    assert log.steps.tolist() == [1, 2, 3] and log.layers == ["0", "1", "2"]
    for i, step in enumerate(log.steps.tolist()):
        np.testing.assert_array_equal(log.counts[i], expected[step])
        assert (log.counts[i].sum(axis=1) == (2 + 1 + 3) * 16 * K).all()
    assert not np.array_equal(expected[1], expected[2])  # the batches route differently: a real comparison


@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_recorded_ids_and_weights_are_the_ones_the_block_gives_its_experts(tmp_path, family):
    model = tiny_model(family).train()
    seen, handles = _expert_inputs(model)
    with RoutingRecorder(model, str(tmp_path / "log"), tokens=True) as rec:
        _train_forward(model, _batch(2))
        _train_forward(model, _batch(3, rows=1))
        rec.step_end(7)
    for h in handles:
        h.remove()
    log = read_store(str(tmp_path / "log"))
    assert log.steps.tolist() == [7] and log.tokens is not None
    for pos in range(len(log.layers)):
        rows = log.tokens.layer == pos
        ids = torch.cat([i for i, _ in seen[pos]]).numpy()          # (T, K) in forward order
        weights = torch.cat([w for _, w in seen[pos]]).float().numpy()
        np.testing.assert_array_equal(log.tokens.ids[rows], ids)
        np.testing.assert_array_equal(log.tokens.weights[rows], weights)
        np.testing.assert_array_equal(log.counts[0, pos], np.bincount(ids.ravel(), minlength=E))


def test_deepseek_v3_selection_is_the_biased_group_limited_one_the_engine_computes(tmp_path):
    """DeepSeek-V3's forward drops its router logits; the recorder still has its choice: sigmoid + correction bias,
    4 groups of which 2 are kept. The engine's router (its own code) agrees; a plain top-k of the scores does not."""
    model = tiny_model("deepseek_v3", layers=3).train()
    adapter = adapter_for("deepseek_v3")
    blocks = moe_blocks(model, adapter)
    inputs = {}
    handles = [block.gate.register_forward_pre_hook(lambda m, a, pos=pos: inputs.__setitem__(pos, a[0].detach()))
               for pos, (_, block) in enumerate(blocks)]
    with RoutingRecorder(model, str(tmp_path / "log"), tokens=True) as rec:
        _train_forward(model, _batch(4, rows=4))
        rec.step_end(1)
    for h in handles:
        h.remove()
    log = read_store(str(tmp_path / "log"))
    assert log.layers == ["1", "2"]  # layer 0 is dense (first_k_dense_replace=1)
    plain_differs = False
    for pos, (_, block) in enumerate(blocks):
        cfg = engine_config(block, adapter, model.config)
        x = inputs[pos].reshape(-1, cfg.d_model)  # (T, D)
        routing = engine_layer(block, cfg, adapter).router(x, cfg, torch.Generator())
        recorded = np.sort(log.tokens.ids[log.tokens.layer == pos], axis=1)
        np.testing.assert_array_equal(recorded, np.sort(routing.top_k_index.numpy(), axis=1))
        plain = torch.topk(routing.router_logits.sigmoid(), K, dim=-1).indices.numpy()
        plain_differs |= not np.array_equal(recorded, np.sort(plain, axis=1))
    assert plain_differs  # the bias and the groups change the choice: the comparison above tests them


# --- steps, evaluation, every, checkpointing ------------------------------------------------------------------

def test_steps_carry_the_given_numbers_eval_forwards_and_skipped_steps_are_not_written(tmp_path):
    model = tiny_model("mixtral").train()
    with RoutingRecorder(model, str(tmp_path / "log"), every=2) as rec:
        written = []
        for step in range(10, 16):
            _train_forward(model, _batch(step))
            with torch.no_grad():
                model(input_ids=_batch(100 + step, rows=3))  # evaluation inside a training run (train mode)
            model.eval()
            model(input_ids=_batch(200 + step, rows=3))      # eval mode with autograd on
            model.train()
            written.append(rec.step_end(step))
        assert not rec.step_end(16)  # a step without a training forward writes nothing
    assert written == [True, False, True, False, True, False]
    log = read_store(str(tmp_path / "log"))
    assert log.steps.tolist() == [10, 12, 14]
    assert (log.counts.sum(axis=2) == 2 * 16 * K).all()  # only the training forward's 32 tokens, each K times
    assert log.source == "moe-scope-recorder" and log.top_k == K
    assert log.meta == {"model_type": "mixtral", "n_experts": E, "top_k": K, "every": 2}


def test_steps_reach_the_disk_once_per_flush_interval_and_all_of_them_at_close(tmp_path):
    from moe.traces.store import parts
    model = tiny_model("mixtral").train()
    every_step, buffered = str(tmp_path / "now"), str(tmp_path / "later")
    with RoutingRecorder(model, every_step, flush_seconds=0) as now, \
            RoutingRecorder(model, buffered, flush_seconds=3600) as later:
        for step in (1, 2, 3):
            _train_forward(model, _batch(step))
            now.step_end(step)
            later.step_end(step)
            assert read_store(every_step).steps.tolist() == list(range(1, step + 1))  # on disk as it ends
            assert parts(buffered, "counts") == []
    assert len(parts(every_step, "counts")) == 3 and len(parts(buffered, "counts")) == 1
    np.testing.assert_array_equal(read_store(buffered).counts, read_store(every_step).counts)
    with pytest.raises(ValueError, match="flush_seconds"):
        RoutingRecorder(model, str(tmp_path / "bad"), flush_seconds=-1.0)


def test_gradient_checkpointing_recompute_is_not_counted_twice(tmp_path):
    counts = []
    for name, checkpointing in (("plain", False), ("ckpt", True)):
        model = tiny_model("mixtral").train()
        if checkpointing:
            model.activation_checkpointing_enable()
        with RoutingRecorder(model, str(tmp_path / name)) as rec:
            _train_forward(model, _batch(5))
            rec.step_end(1)
        counts.append(read_store(str(tmp_path / name)).counts)
    np.testing.assert_array_equal(counts[0], counts[1])
    assert counts[1].sum() == 2 * 2 * 16 * K


def test_refusals_are_one_line_and_leave_no_hooks(tmp_path):
    with pytest.raises(ValueError, match="not a supported sparse MoE family"):
        RoutingRecorder(tiny_model("llama"), str(tmp_path / "a"))
    model = tiny_model("mixtral")
    with pytest.raises(ValueError, match="every must be a positive integer"):
        RoutingRecorder(model, str(tmp_path / "b"), every=0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(ValueError, match="is not empty"):
        RoutingRecorder(model, str(tmp_path / "c"))
    assert all(not block.gate._forward_hooks for _, block in moe_blocks(model, adapter_for("mixtral")))


# --- the callback ---------------------------------------------------------------------------------------------

def _state(step: int, main_process: bool):
    from transformers import TrainerState
    state = TrainerState(is_world_process_zero=main_process)
    state.global_step = step
    return state


@pytest.mark.parametrize("main_process", [True, False])
def test_the_callback_writes_on_the_main_process_only(tmp_path, main_process):
    model = tiny_model("mixtral").train()
    path = str(tmp_path / "log")
    cb = MoeScopeCallback(path)
    cb.on_train_begin(None, _state(0, main_process), None, model=model)
    hooked = any(block.gate._forward_hooks for _, block in moe_blocks(model, adapter_for("mixtral")))
    for step in (1, 2):
        _train_forward(model, _batch(step))
        cb.on_step_end(None, _state(step, main_process), None, model=model)
    cb.on_train_end(None, _state(2, main_process), None, model=model)
    assert not any(block.gate._forward_hooks for _, block in moe_blocks(model, adapter_for("mixtral")))
    if main_process:
        assert hooked and read_store(path).steps.tolist() == [1, 2]
    else:
        assert not hooked and not os.path.exists(path)


def test_the_log_opens_in_trace_report(tmp_path):
    model = tiny_model("mixtral").train()
    with RoutingRecorder(model, str(tmp_path / "log")) as rec:
        for step in (3, 4):
            _train_forward(model, _batch(step))
            rec.step_end(step)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["trace-report", str(tmp_path / "log")]) == 0
    doc = json.loads(out.getvalue())
    log = read_store(str(tmp_path / "log"))
    assert doc["source"] == "moe-scope-recorder" and doc["layers"] == ["0", "1"] and doc["steps"] == 2
    assert doc["load"]["1"] == log.counts[:, 1].tolist()


def test_a_trainer_run_writes_one_step_per_optimizer_step_and_leaves_evaluation_out(tmp_path):
    pytest.importorskip("accelerate")  # the Trainer needs it (requirements.txt pins it)
    from transformers import Trainer, TrainingArguments

    model = tiny_model("mixtral").train()
    data = [{"input_ids": ids, "labels": ids} for ids in _batch(6, rows=24)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=2,
                             gradient_accumulation_steps=3, eval_strategy="steps", eval_steps=2,
                             per_device_eval_batch_size=4, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, logging_strategy="no", seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8],
                      callbacks=[MoeScopeCallback(str(tmp_path / "log"))])
    trainer.train()
    log = read_store(str(tmp_path / "log"))
    assert log.steps.tolist() == [1, 2, 3, 4, 5] == list(range(1, trainer.state.global_step + 1))
    assert (log.counts.sum(axis=2) == 3 * 2 * 16 * K).all()  # 3 accumulated forwards of 2 rows; no eval rows
    assert not any(block.gate._forward_hooks for _, block in moe_blocks(model, adapter_for("mixtral")))


def test_the_example_fine_tunes_the_bundled_model_and_prints_how_to_open_its_log(tmp_path, monkeypatch, capsys):
    pytest.importorskip("accelerate")
    import pathlib
    import runpy
    log_dir = str(tmp_path / "log")
    monkeypatch.setattr("sys.argv", ["record_finetune.py", log_dir, "--steps", "2"])
    runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "record_finetune.py"),
                   run_name="__main__")
    printed = capsys.readouterr().out
    assert f"python -m moe trace-report {log_dir}" in printed
    log = read_store(log_dir)
    assert log.steps.tolist() == [1, 2] and log.layers == ["0", "1", "2", "3"]
    assert (log.counts.sum(axis=2) == 8 * 128 * K).all()  # a batch of 8 windows of 128 bytes, top-2
