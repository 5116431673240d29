"""No forward past the model's context anywhere a text reaches a model: the page's loaders and model-report, on a
text of three contexts, with a hook on every embedding lookup (each forward's first step) counting its positions."""
import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from moe.hf.counterfactual import Counterfactual
from moe.hf.windows import plan_windows
from tests.model_support import saved_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py

CONTEXT = 128  # the tiny models' max_position_embeddings (tests/model_support.py), no training.json
TEXT = "".join(f"x{i} = {i} * 2  # step\n" for i in range(20))[:3 * CONTEXT]  # byte tokenizer: 3 contexts


class Lengths(list):
    rows: list


@contextlib.contextmanager
def forward_lengths():
    """The sequence length of every embedding lookup while the block runs (every model forward starts with one);
    `lengths.rows` the batch size of each (windows run together in one forward when routing allows)."""
    lengths = Lengths()
    lengths.rows = []

    def hook(module, args):
        if isinstance(module, torch.nn.Embedding):
            lengths.append(int(args[0].shape[-1]))
            lengths.rows.append(int(args[0].shape[0]) if args[0].dim() > 1 else 1)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield lengths
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("context") / "tiny", layers=2)


def test_the_text_is_three_contexts_and_the_hook_sees_a_forward_past_the_context(model_dir):
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    assert len(TEXT.encode("utf-8")) == 3 * CONTEXT and len(plan_windows(3 * CONTEXT, CONTEXT)) == 5
    with forward_lengths() as lengths:  # a run told the context is the whole text: one forward, caught
        run_model(load_model(model_dir).model, torch.tensor(list(TEXT.encode("utf-8"))), context=3 * CONTEXT)
    assert lengths == [3 * CONTEXT]


def test_the_pages_loaders_never_run_a_forward_past_the_context_and_say_how_many_windows(model_dir):
    from dashboard import loaders

    windows = len(plan_windows(3 * CONTEXT, CONTEXT))
    cf = Counterfactual(capacity_factor=1.0, drop_policy="position")
    with forward_lengths() as lengths:
        view = loaders.analyse(model_dir, TEXT, 4096)
        files = loaders.model_exports(model_dir, TEXT, 4096)
        own_cf = loaders.counterfactual(model_dir, TEXT, 4096, cf)
        sweep = loaders.counterfactual_sweep(model_dir, TEXT, 4096, cf)
    assert lengths and max(lengths) == CONTEXT  # every window holds CONTEXT positions, none more
    # windows run: analyse, exports, counterfactual; the sweep: its own routing, then one per layer
    assert sum(lengths.rows) == windows * (1 + 1 + 1 + 1 + 2)
    # dropless routing runs the windows as one batch; a capacity counterfactual one window per forward
    assert lengths.rows == [windows, windows] + [1] * windows + [windows] + [1] * (2 * windows)
    assert (view["context"], view["windows"], len(view["tokens"])) == (CONTEXT, windows, 3 * CONTEXT)
    report = json.loads(files["summary_json"])
    assert (report["context"], report["windows"], report["tokens"]) == (CONTEXT, windows, 3 * CONTEXT)
    assert len(own_cf["loss"]) == 3 * CONTEXT - 1 and len(sweep) == 2
    routing = pd.read_csv(io.StringIO(files["routing_csv"]))
    assert sorted(routing.position.unique()) == list(range(3 * CONTEXT))  # every token scored once


def test_model_report_never_runs_a_forward_past_the_context_and_says_how_many_windows(model_dir, capsys):
    from moe.cli.main import main

    windows = len(plan_windows(3 * CONTEXT, CONTEXT))
    with forward_lengths() as lengths:
        code = main(["model-report", "--model", model_dir, "--text", TEXT, "--cf-capacity", "1.0", "--cf-sweep"])
    out = capsys.readouterr().out
    assert code == 0
    assert lengths and max(lengths) == CONTEXT
    assert sum(lengths.rows) == windows * (1 + 1 + 1 + 2)  # own, counterfactual; the sweep: own, one per layer
    assert lengths.rows == [windows] + [1] * windows + [windows] + [1] * (2 * windows)
    report = json.loads(out)
    assert (report["context"], report["windows"]) == (CONTEXT, windows)
    assert (report["counterfactual"]["context"], report["counterfactual"]["windows"]) == (CONTEXT, windows)
    assert len(report["sweep"]) == 2 and np.isfinite([r["delta_loss_bits"] for r in report["sweep"]]).all()
