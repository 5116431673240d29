"""Loading local checkpoints and `python -m moe model-report`: values, formats and every refusal."""
import io
import json
import math
import os
import shutil

import pandas as pd
import pytest
import torch

from moe.cli.main import main
from moe.hf.instrument import run_model
from moe.hf.load import estimate_model_bytes, load_model, read_config
from moe.hf.text import save_tokenizer
from moe.stats import PER_EXPERT_COLUMNS
from tests.model_support import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-mixtral"
    tiny_model("mixtral", layers=2).save_pretrained(path)
    save_tokenizer(str(path))
    return path


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_report_has_one_entry_per_decoder_layer_with_the_engine_numbers(model_dir, capsys):
    text = "for i in range(10):\n    print(i)\n"
    code, out, err = _run(["model-report", "--model", str(model_dir), "--text", text], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"model", "tokens", "context", "windows", "token_loss_bits", "token_top1", "layers"}
    assert report["model"] == "tiny-mixtral" and report["tokens"] == len(text.encode())
    assert report["context"] == 128 and report["windows"] == 1  # max_position_embeddings; no training.json
    assert [layer["layer"] for layer in report["layers"]] == [0, 1]
    # the numbers are the engine's, recomputed independently through the library
    loaded = load_model(str(model_dir))
    run = run_model(loaded.model, torch.tensor(list(text.encode())))
    by_hand = torch.nn.functional.cross_entropy(run.logits[:-1], run.input_ids[1:], reduction="none") / math.log(2)
    assert report["token_loss_bits"] == pytest.approx(by_hand.tolist(), rel=1e-6)
    for entry, trace in zip(report["layers"], run.traces):
        assert entry["summary"]["aux_loss"] == pytest.approx(trace.summary()["aux_loss"])
        demand = [row["demand"] for row in entry["per_expert"]]
        assert demand == trace.routed.sum(dim=0).tolist()
        assert sum(demand) == 2 * report["tokens"]
        assert list(entry["per_expert"][0]) == PER_EXPERT_COLUMNS


def test_csv_report_is_one_row_per_layer_and_expert(model_dir, capsys):
    code, out, _ = _run(["model-report", "--model", str(model_dir), "--text", "hello world",
                         "--format", "csv"], capsys)
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == ["layer", *PER_EXPERT_COLUMNS]
    assert len(table) == 2 * 8
    assert table.groupby("layer")["demand"].sum().tolist() == [2 * 11, 2 * 11]


def test_a_long_text_file_is_cut_before_tokenising_then_to_max_tokens_with_notices(model_dir, tmp_path, capsys):
    big = tmp_path / "big.txt"
    big.write_text("abc def\n" * (1 << 19))  # 4 MiB: only --max-tokens × 64 bytes of it are read
    code, out, err = _run(["model-report", "--model", str(model_dir), "--text-file", str(big),
                           "--max-tokens", "64"], capsys)
    assert code == 0
    assert json.loads(out)["tokens"] == 64
    assert "--text-file is longer than 4096 bytes; read the first 4096 (--max-tokens 64 × 64 bytes per token)" in err
    assert "the text has 4096 tokens; routing the first 64" in err


def test_read_text_file_reads_at_most_the_limit_and_never_half_a_character(tmp_path):
    from moe.hf.report import read_text_file

    path = tmp_path / "t.txt"
    path.write_bytes("aé".encode() * 1000)  # 3000 bytes; é is 2 bytes
    assert read_text_file(str(path), 2) == ("a", True)  # the cut é is dropped, not turned into U+FFFD
    assert read_text_file(str(path), 3) == ("aé", True)
    assert read_text_file(str(path), 3000) == ("aé" * 1000, False)
    path.write_bytes(b"ok \xff")  # an invalid byte inside the file is replaced
    assert read_text_file(str(path), 100) == ("ok \ufffd", False)


def test_a_fifo_a_device_or_a_directory_is_refused_without_reading_it(model_dir, tmp_path, capsys):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes to it: reading would block for ever
    base = ["model-report", "--model", str(model_dir), "--max-tokens", "64", "--text-file"]
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        assert "is not a regular file" in _refusal([*base, path], capsys)


def test_text_that_is_not_utf8_is_refused_in_one_line(model_dir, capsys):
    # argv bytes that are not UTF-8 reach Python as surrogate escapes (os.fsdecode)
    text = os.fsdecode(b"caf\xe9 \xff")
    line = _refusal(["model-report", "--model", str(model_dir), "--text", text], capsys)
    assert "--text is not valid UTF-8 (2 undecodable bytes)" in line and "--text-file" in line


def test_no_progress_bar_unless_stderr_is_a_terminal_and_the_setting_is_restored(model_dir, capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # transformers' default: the CLI must quiet it itself
    code, _, err = _run(["model-report", "--model", str(model_dir), "--text", "hello"], capsys)
    assert code == 0 and "Loading weights" not in err and err == ""
    assert hf_logging.is_progress_bar_enabled()  # the process-wide switch is back as it was
    from moe.hf.report import progress_bars

    with pytest.raises(KeyError):
        with progress_bars(False):
            assert not hf_logging.is_progress_bar_enabled()
            raise KeyError("a failure inside")
    assert hf_logging.is_progress_bar_enabled()


def test_the_json_is_strict_even_where_a_number_is_undefined(model_dir, capsys):
    """A one-token text has no next-token loss (the mean of nothing): null, not NaN and not a crash."""
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    code, out, err = _run(["model-report", "--model", str(model_dir), "--text", "a", "--cf-top-k", "1"], capsys)
    assert code == 0, err
    report = json.loads(out, parse_constant=refuse)
    assert report["tokens"] == 1
    assert report["counterfactual"]["mean_loss_bits"] == {"own": None, "counterfactual": None, "delta": None}


def _refusal(argv, capsys) -> str:
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("python -m moe: error:")]
    assert len(lines) == 1
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(model_dir, tmp_path, capsys):
    base = ["model-report", "--model", str(model_dir)]
    assert "does not exist" in _refusal(["model-report", "--model", str(tmp_path / "nope"), "--text", "x"], capsys)
    assert "empty" in _refusal(base + ["--text", "   "], capsys)
    assert "does not exist" in _refusal(base + ["--text-file", str(tmp_path / "none.txt")], capsys)
    assert "--text" in _refusal(base, capsys)  # neither --text nor --text-file
    assert "positive integer" in _refusal(base + ["--text", "x", "--max-tokens", "0"], capsys)


def test_non_moe_unsupported_and_truncated_checkpoints_are_refused(model_dir, tmp_path, capsys):
    dense = tmp_path / "dense"
    tiny_model("llama").save_pretrained(dense)
    line = _refusal(["model-report", "--model", str(dense), "--text", "x"], capsys)
    assert "'llama' is not a supported sparse MoE family" in line and "mixtral, qwen3_moe, olmoe" in line

    planned = tmp_path / "planned"
    shutil.copytree(model_dir, planned)
    config = json.loads((planned / "config.json").read_text())
    (planned / "config.json").write_text(json.dumps({**config, "model_type": "jamba"}))
    assert "supported families: mixtral" in _refusal(["model-report", "--model", str(planned), "--text", "x"], capsys)
    (planned / "config.json").write_text(json.dumps({**config, "model_type": "deepseek_v3"}))  # keys don't fit
    # (num_local_experts is DeepseekV3Config's other name for n_routed_experts: the expert width is what lacks)
    assert "lacks moe_intermediate_size" in _refusal(["model-report", "--model", str(planned), "--text", "x"], capsys)

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "truncated" in _refusal(["model-report", "--model", str(broken), "--text", "x"], capsys)


def test_memory_estimate_refuses_an_over_budget_model(model_dir, monkeypatch):
    config = read_config(str(model_dir))
    est = estimate_model_bytes(str(model_dir), config, 128)
    # weights: what the config's model allocates (parameters and buffers, float32 here); loading: the file mapped
    model = tiny_model("mixtral", layers=2)
    assert est["weights"] == 4 * sum(t.numel() for t in [*model.parameters(), *model.buffers()])
    assert est["loading"] == (model_dir / "model.safetensors").stat().st_size
    with pytest.raises(ValueError, match="over the memory budget"):
        load_model(str(model_dir), tokens=128, budget=est["total"] - 1)
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.000001")
    with pytest.raises(ValueError, match="MOE_SCOPE_MEMORY_GB"):
        load_model(str(model_dir), tokens=128)
    assert load_model(str(model_dir), tokens=128, budget=est["total"]).layers == [0, 1]


def test_counterfactual_options_add_the_loss_change_and_own_settings_change_nothing(model_dir, capsys):
    base = ["model-report", "--model", str(model_dir), "--text", "for i in range(10):\n    print(i)\n"]
    code, out, err = _run([*base, "--cf-top-k", "2"], capsys)  # the model's own top_k
    assert code == 0, err
    same = json.loads(out)["counterfactual"]
    assert same["mean_loss_bits"]["delta"] == 0.0
    code, out, err = _run([*base, "--cf-top-k", "1", "--cf-layers", "1"], capsys)
    report = json.loads(out)
    cf = report["counterfactual"]
    assert cf["settings"] == {"top_k": 1, "layers": [1]} and cf["mean_loss_bits"]["delta"] != 0.0
    untouched = cf["layers"][0]["summary"]  # layer 0 comes before the changed layer: the same routing
    assert untouched == report["layers"][0]["summary"] | {"forward_ms": untouched["forward_ms"]}
    assert cf["layers"][1]["summary"]["served"] == report["tokens"]  # top-1: one assignment per token
    code, out, err = _run([*base, "--cf-capacity", "0.5"], capsys)
    assert json.loads(out)["counterfactual"]["layers"][0]["summary"]["dropped"] > 0
    assert "comma-separated" in _refusal([*base, "--cf-layers", "one"], capsys)
    assert "--format json" in _refusal([*base, "--cf-top-k", "1", "--format", "csv"], capsys)
    assert "not MoE layers" in _refusal([*base, "--cf-layers", "5"], capsys)


@pytest.mark.parametrize("prog", ["python -m moe", "moe-scope"])
def test_a_cut_text_is_noted_under_the_command_the_user_typed(model_dir, capsys, prog):
    code = main(["model-report", "--model", str(model_dir), "--text", "x" * 40, "--max-tokens", "8"], prog=prog)
    err = capsys.readouterr().err
    assert code == 0 and f"{prog}: note: the text has 40 tokens; routing the first 8 (--max-tokens 8)" in err


def _direct(model_dir, text, cf):
    """The counterfactual entry computed through the library, not the CLI."""
    from moe.hf.counterfactual import run_counterfactual
    from moe.hf.report import counterfactual_dict

    model = load_model(str(model_dir)).model
    ids = torch.tensor(list(text.encode()))
    cf_run = run_counterfactual(model, ids, cf)
    return counterfactual_dict(run_model(model, ids), cf_run, cf), cf_run


def _without_times(entry: dict) -> dict:
    """The entry as its JSON reads back (NaN as null), with the wall times (which vary) blanked."""
    from moe.jsonio import dumps

    entry = json.loads(dumps(entry))
    return {**entry, "layers": [{**layer, "summary": {**layer["summary"], "forward_ms": None}}
                                for layer in entry["layers"]]}


@pytest.mark.parametrize("name", ["hot", "cold"])
def test_a_hot_or_cold_expert_is_the_pages_counterfactual_and_takes_every_or_no_token(model_dir, capsys, name):
    from moe.hf.counterfactual import BIAS_COLD, BIAS_HOT, Counterfactual

    text = "for i in range(10):\n    print(i)\n"
    code, out, err = _run(["model-report", "--model", str(model_dir), "--text", text, f"--cf-{name}-expert", "3"],
                          capsys)
    assert code == 0, err
    cf = json.loads(out)["counterfactual"]
    bias = {"hot": BIAS_HOT, "cold": BIAS_COLD}[name]
    direct, cf_run = _direct(model_dir, text, Counterfactual(bias_expert=3, bias=bias))
    assert cf["settings"] == {"bias_expert": 3, "bias": bias, "layers": "all"}
    assert _without_times(cf) == _without_times(direct)  # the same numbers, exactly
    assert cf["mean_loss_bits"]["delta"] != 0.0
    # every changed layer: expert 3 is in every token's top-k (hot) or in none (cold)
    for trace in cf_run.traces:
        chosen = (trace.top_k_index == 3).any(dim=1)  # (T,)
        assert bool(chosen.all()) if name == "hot" else not bool(chosen.any())
    assert cf["layers"][0]["summary"]["served"] == 2 * len(text.encode())  # still top-2, dropless


def test_a_bad_hot_or_cold_expert_is_refused_in_one_line(model_dir, capsys):
    base = ["model-report", "--model", str(model_dir), "--text", "hello"]
    both = _refusal([*base, "--cf-hot-expert", "1", "--cf-cold-expert", "2"], capsys)
    assert "--cf-cold-expert" in both and "not allowed with" in both and "--cf-hot-expert" in both
    assert "not an expert of this model; choose 0..7" in _refusal([*base, "--cf-hot-expert", "8"], capsys)
    assert "--cf-cold-expert 9 is not" in _refusal([*base, "--cf-cold-expert", "9"], capsys)
    assert "integer ≥ 0, got '-1'" in _refusal([*base, "--cf-hot-expert", "-1"], capsys)
    assert "integer ≥ 0, got 'x'" in _refusal([*base, "--cf-cold-expert", "x"], capsys)
    assert "--format json" in _refusal([*base, "--cf-hot-expert", "1", "--format", "csv"], capsys)


def test_the_sweep_is_each_layer_alone_computed_directly(model_dir, capsys):
    from moe.hf.counterfactual import Counterfactual, run_counterfactual

    text = "for i in range(10):\n    print(i)\n"
    base = ["model-report", "--model", str(model_dir), "--text", text]
    code, out, err = _run([*base, "--cf-capacity", "0.5", "--cf-layers", "0", "--cf-sweep"], capsys)
    assert code == 0, err
    report = json.loads(out)
    sweep = report["sweep"]
    assert [row["layer"] for row in sweep] == [0, 1]  # every MoE layer, whatever --cf-layers says
    model = load_model(str(model_dir)).model
    ids = torch.tensor(list(text.encode()))
    own = run_model(model, ids).mean_loss_bits()
    for k, row in enumerate(sweep):
        alone = run_counterfactual(model, ids, Counterfactual(layers=(k,), capacity_factor=0.5))
        assert row["delta_loss_bits"] == pytest.approx(alone.mean_loss_bits() - own)
        demand, served = alone.traces[k].routed.sum(), alone.traces[k].served.sum()
        assert row["dropped_fraction"] == pytest.approx(float((demand - served) / demand)) and row["dropped_fraction"] > 0
    code, out, err = _run([*base, "--cf-top-k", "2", "--cf-sweep"], capsys)  # the model's own top_k: no change
    assert [row["delta_loss_bits"] for row in json.loads(out)["sweep"]] == [0.0, 0.0]
    code, out, err = _run([*base, "--cf-top-k", "1"], capsys)
    assert "sweep" not in json.loads(out)
    assert "--format json" in _refusal([*base, "--cf-sweep", "--format", "csv"], capsys)


def test_a_typed_special_token_name_is_read_as_its_text(model_dir, capsys):
    """`<|endoftext|>` typed in a text is 13 bytes of text, not the EOS token (which stands for no bytes)."""
    from moe.hf.load import load_model
    from moe.hf.report import EMPTY_TEXT_CLI, EMPTY_TEXT_PAGE, encode_text

    text = "a<|endoftext|>b"
    ids, total = encode_text(load_model(str(model_dir)).tokenizer, text, 64)
    assert ids.tolist() == list(text.encode("utf-8")) and total == 15
    code, out, _ = _run(["model-report", "--model", str(model_dir), "--text", text], capsys)
    assert code == 0 and json.loads(out)["tokens"] == 15
    with pytest.raises(ValueError, match="type a text") as err:
        encode_text(load_model(str(model_dir)).tokenizer, "  ", 64, EMPTY_TEXT_PAGE)
    assert "--text" not in str(err.value) and "--text-file" in EMPTY_TEXT_CLI


def test_a_tokenizer_with_more_ids_than_the_model_is_one_line(tmp_path, capsys):
    """The byte tokenizer (257 ids) with a model of 100: 't' is id 116 + its offset. It was an IndexError traceback
    from the embedding (exit 1); now the check before the forward names the id and the vocabulary."""
    model = tiny_model("mixtral", layers=2)
    model.resize_token_embeddings(100)
    model.save_pretrained(tmp_path / "small-vocab")
    save_tokenizer(str(tmp_path / "small-vocab"))
    capsys.readouterr()  # the save's progress bar
    code, _, err = _run(["model-report", "--model", str(tmp_path / "small-vocab"), "--text", "the cat"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "is outside the model's vocabulary 0..99: the tokenizer has more ids than the model's embedding" in err
    with pytest.raises(ValueError, match="outside the model's vocabulary 0..99"):
        run_model(load_model(str(tmp_path / "small-vocab")).model, torch.tensor([1, 2, 100]))


def test_the_hot_and_cold_help_says_where_they_only_push(capsys):
    """±1 on the selection score forces the expert in or out only where the scores alone select (the test above, a
    softmax router); DeepSeek-V3's group limit can outweigh it, so the help must not say 'always' or 'never' alone
    (the auditor found a hot expert left out of 3 of 331 tokens on pydoc-deepseek)."""
    from moe.hf.counterfactual import BIAS_NOTE, Counterfactual, run_counterfactual
    from tests.model_support import VOCAB
    with pytest.raises(SystemExit):
        main(["model-report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count(" ".join(BIAS_NOTE.split())) == 2  # --cf-hot-expert and --cf-cold-expert
    model = tiny_model("deepseek_v3", layers=3)
    from moe.hf.instrument import instrument
    instrument(model)
    ids = torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(0))
    missed = [int((~(t.top_k_index == 6).any(dim=1)).sum()) for t in
              run_counterfactual(model, ids, Counterfactual(bias_expert=6, bias=1.0)).traces]
    assert max(missed) > 0  # what the note warns of: hot, yet not chosen for some tokens


def test_a_drop_policy_without_a_capacity_is_refused(model_dir, capsys):
    """--cf-drop alone was accepted and changed nothing (every family here is dropless)."""
    code, _, err = _run(["model-report", "--model", str(model_dir), "--text", "hello", "--cf-drop", "probs"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--cf-drop chooses which tokens a capacity drops; give --cf-capacity too" in err
    code, _, err = _run(["model-report", "--model", str(model_dir), "--text", "hello", "--cf-drop", "probs",
                         "--cf-capacity", "1"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("flags, flag", [(["--model", "", "--text", "hi"], "--model"),
                                         (["--model", "  ", "--text", "hi"], "--model"),
                                         (["--text-file", " "], "--text-file")])
def test_an_empty_path_option_is_refused(capsys, flags, flag):
    """--model "" routed the text through the default model, silently."""
    code, _, err = _run(["model-report", *flags], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{flag} is empty; give a path, or leave {flag} out" in err


def test_a_model_path_that_is_a_file_or_comes_from_the_environment_says_so(tmp_path, capsys, monkeypatch):
    """--model FILE said the file "does not exist"; $MOE_SCOPE_MODEL=/nope named a path the user never typed."""
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = _run(["model-report", "--model", str(tmp_path / "notes.txt"), "--text", "hi"], capsys)
    assert code == 2 and "notes.txt' is a file, not a directory; give a local directory with config.json" in err
    monkeypatch.setenv("MOE_SCOPE_MODEL", str(tmp_path / "nope"))
    code, _, err = _run(["model-report", "--text", "hi"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "nope' does not exist" in err
    assert "(the model named by $MOE_SCOPE_MODEL; unset it for the bundled model)" in err
