"""The bundled-model trainer: the topic split, the evaluation maths, and the committed model itself."""
import dataclasses
import json
import math
import pathlib

import pytest
import torch

from moe.hf.lm_config import LMTrainConfig
from moe.hf.lm_train import build_model, evaluate, join_ids, split_topics
from moe.hf.load import BUNDLED_MODEL
from moe.hf.text import EOS_ID

BUNDLED = pathlib.Path(BUNDLED_MODEL)


def test_split_holds_out_whole_topics_with_a_tenth_of_the_bytes():
    from pydoc_data.topics import topics

    train, held = split_topics(0.1, seed=0)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(topics)
    size = lambda docs: sum(len(t.encode()) for t in docs.values())  # noqa: E731
    assert 0.1 <= size(held) / (size(train) + size(held)) < 0.2
    assert split_topics(0.1, seed=0) == (train, held)
    assert split_topics(0.1, seed=1)[1] != held
    ids = join_ids(held)
    assert int((ids == EOS_ID).sum()) == len(held)


def test_evaluate_reports_the_mean_next_byte_cross_entropy_in_bits():
    cfg = dataclasses.replace(LMTrainConfig(), hidden=16, d_expert=16, layers=2, heads=2, seq_len=32,
                              curriculum=(32,))
    model = build_model(cfg)
    ids = torch.tensor(list(b"print('hello world') # 42\n" * 4))[:96]
    ids[40] = EOS_ID  # an EOS target is not a byte: excluded
    got = evaluate(model, ids, cfg.seq_len)
    windows = ids.view(-1, 32)
    with torch.no_grad():
        logp = model(input_ids=windows).logits.log_softmax(-1)
    nll = [-logp[w, s, windows[w, s + 1]].item() for w in range(3) for s in range(31) if windows[w, s + 1] != EOS_ID]
    assert got["bits_per_byte"] == pytest.approx(sum(nll) / len(nll) / math.log(2), rel=1e-5)
    assert got["tokens"] == len(nll) and len(got["nmi"]) == 2


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    cfg = dataclasses.replace(LMTrainConfig(), hidden=16, d_expert=16, layers=1, heads=2)
    state = torch.get_rng_state()
    a, b = build_model(cfg), build_model(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="bundled model not trained yet")
def test_the_bundled_model_meets_the_spec():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    size = sum(f.stat().st_size for f in BUNDLED.iterdir())
    assert size <= 16 * 1024 * 1024
    config = json.loads((BUNDLED / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_hidden_layers"] >= 4
    assert config["num_local_experts"] >= 8 and config["num_experts_per_tok"] == 2
    tok = AutoTokenizer.from_pretrained(BUNDLED, local_files_only=True)
    assert tok("a\n")["input_ids"] == [97, 10]
    model = AutoModelForCausalLM.from_pretrained(BUNDLED, local_files_only=True).eval()
    report = json.loads((BUNDLED / "training.json").read_text())
    assert report["bits_per_byte"] <= 0.7 * report["unigram_bits"]
    # an independent spot check on a slice of the held-out text
    _, held = split_topics(0.1, seed=report["config"]["seed"])
    ids = join_ids(held)[:2048]
    assert evaluate(model, ids, 128)["bits_per_byte"] <= 0.7 * report["unigram_bits"]


def test_train_lm_cli_refuses_bad_arguments_with_one_line(capsys):
    from moe.cli.main import main

    for argv in (["train-lm"], ["train-lm", "--out", "x", "--steps", "0"], ["train-lm", "--out", "x", "--seed", "-1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m moe: error:")


def test_the_curriculum_gives_each_length_an_equal_share_of_the_steps_at_the_same_bytes_per_step():
    from moe.hf.lm_train import phase_length

    cfg = LMTrainConfig(steps=9)
    assert [phase_length(cfg, s) for s in range(9)] == [128] * 3 + [256] * 3 + [512] * 3
    assert [cfg.phase_batch(n) * n for n in cfg.curriculum] == [16 * 128] * 3
    assert cfg.eval_lengths() == (128, 256, 512) and LMTrainConfig(seq_len=64, curriculum=(64,)).eval_lengths() == (64,)
    for bad in ((256, 128, 512), (128, 256), (1, 512), ()):
        with pytest.raises(ValueError, match="curriculum"):
            LMTrainConfig(curriculum=bad)


def test_the_report_prints_bits_per_byte_at_each_window_length():
    from moe.hf.lm_train import format_report

    report = {"held_out_topics": ["a"], "held_out_bytes": 10, "bits_per_byte": 1.25, "unigram_bits": 4.0,
              "reduction": 0.6875, "nmi_trained": [0.5], "nmi_init": [0.1], "config": {"seq_len": 512},
              "bits_per_byte_at": {"128": 1.5, "256": 1.375, "512": 1.25}}
    lines = format_report(report).splitlines()
    assert lines[0] == "held-out topics: 1 (10 bytes scored)"  # the scored targets, not the topics' whole text
    assert lines[1:5] == ["held-out bits per byte: 1.250 (windows of 512 bytes)", "  in windows of 128 bytes: 1.500",
                          "  in windows of 256 bytes: 1.375", "  in windows of 512 bytes: 1.250"]
    assert lines[6] == "reduction: 68.8% below the unigram figure"
    worse = format_report({**report, "reduction": -0.508}).splitlines()  # it said "-50.8% below"
    assert worse[6] == "reduction: 50.8% above the unigram figure"


def test_fewer_steps_than_curriculum_lengths_are_refused_so_the_declared_context_is_always_trained(capsys):
    """--steps 1 or 2 would train only at 128 (and 256) yet declare 512 positions: refused in one line. With at least
    one step per length, the last step trains at seq_len, the context the model declares."""
    from moe.cli.main import main
    from moe.hf.lm_train import phase_length

    for steps in (1, 2):
        with pytest.raises(ValueError, match=f"--steps {steps} .* 3 lengths"):
            LMTrainConfig(steps=steps)
        assert main(["train-lm", "--out", "x", "--steps", str(steps)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--steps" in err[0]
    for steps in range(3, 40):
        cfg = LMTrainConfig(steps=steps)
        trained = {phase_length(cfg, s) for s in range(steps)}
        assert trained == {128, 256, 512} and max(trained) == cfg.seq_len
    assert LMTrainConfig(seq_len=64, curriculum=(64,), steps=1).steps == 1
