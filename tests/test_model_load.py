"""Loading a model directory someone else prepared: the estimate holds whatever config.json claims, weights
that are not the config's model are refused before anything is allocated, the tokenizer and the models
already kept count in the one budget, and a malformed config is one line, never a traceback."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from moe.cli.main import main
from moe.hf.load import BUNDLED_MODEL, load_model
from moe.memory import GiB

ROOT = pathlib.Path(__file__).resolve().parents[1]


def copy_model(dst: pathlib.Path, config: dict | None = None, drop: str | None = None, add: dict | None = None):
    """The bundled model copied to `dst`, config.json updated with `config`, tensors whose name holds `drop`
    removed and `add` ({name: tensor}) added."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(BUNDLED_MODEL, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    if drop or add:
        weights = dst / "model.safetensors"
        tensors = {k: v for k, v in load_file(weights).items() if not (drop and drop in k)}
        save_file({**tensors, **(add or {})}, weights, metadata={"format": "pt"})
    return dst


def _refusal(argv, capsys) -> str:
    code = main(argv)
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    lines = [line for line in out.err.splitlines() if line.startswith("python -m moe: error:")]
    assert len(lines) == 1, out.err
    return lines[0]


def test_an_inflated_directory_is_refused_naming_the_missing_tensors(tmp_path):
    """The issue's case: head_dim 262144 and no attention tensors, 6 MB on disk; transformers would fill the
    attention at the config's size (2.7 GB)."""
    inflated = copy_model(tmp_path / "inflated", {"head_dim": 262144}, drop="self_attn")
    assert (inflated / "model.safetensors").stat().st_size < 7 << 20
    with pytest.raises(ValueError, match=r"lack 16 tensors \('model\.layers\.0\.self_attn\.k_proj\.weight'"):
        load_model(str(inflated), tokens=16, budget=64 * GiB)


def test_a_config_that_does_not_match_the_tensors_is_refused(tmp_path):
    import torch

    wider = copy_model(tmp_path / "wider", {"head_dim": 262144})  # every tensor there, the config's shapes larger
    with pytest.raises(ValueError, match="hold 1,873,152 values but config.json describes 2,149,094,656:"):
        load_model(str(wider), tokens=16, budget=64 * GiB)
    extra = copy_model(tmp_path / "extra", add={"model.hidden_payload": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"hold 1 tensor \('model.hidden_payload'\) that config.json does not"):
        load_model(str(extra), tokens=16, budget=64 * GiB)


def model_estimate(path: str, tokens: int) -> dict:
    from moe.hf.load import model_estimate
    return model_estimate(path, tokens)


def test_the_estimate_is_the_config_model_plus_the_file_and_the_tokenizer(tmp_path):
    from moe.hf.checkpoint import TOKENIZER_FACTOR

    est = model_estimate(BUNDLED_MODEL, 16)
    files = sum(pathlib.Path(BUNDLED_MODEL, f).stat().st_size for f in ("tokenizer.json", "tokenizer_config.json"))
    assert est["tokenizer"] == TOKENIZER_FACTOR * files
    assert est["loading"] == pathlib.Path(BUNDLED_MODEL, "model.safetensors").stat().st_size
    assert est["weights"] == 7_492_608 + 128  # 1,873,152 float32 parameters and the rotary buffers
    assert est["total"] == sum(v for k, v in est.items() if k != "total")


def test_a_huge_tokenizer_counts_in_the_budget(tmp_path):
    from moe.hf.checkpoint import TOKENIZER_FACTOR

    big = copy_model(tmp_path / "bigtok")
    base = model_estimate(str(big), 16)["total"]
    file = big / "tokenizer.json"
    before = file.stat().st_size
    file.write_text(json.dumps({**json.loads(file.read_text()), "padding_note": "x" * (2 << 20)}))  # +2 MiB
    est = model_estimate(str(big), 16)
    assert est["total"] - base == TOKENIZER_FACTOR * (file.stat().st_size - before)
    with pytest.raises(ValueError, match=r"tokenizer 8\d\.\d MiB"):
        load_model(str(big), tokens=16, budget=base + (40 << 20))


@pytest.mark.parametrize("text, phrase", [
    ('["not", "an", "object"]', "holds a JSON list, not an object"),
    ('{"model_type": "mixtral", "hidden_size": Infinity}', "holds Infinity, which is not a number JSON allows"),
    ('{"model_type": "mixtral", "hidden_size": NaN}', "holds NaN"),
    ('{"model_type": ["mixtral"]}', "model_type is list, not a family name"),
])
def test_a_config_json_that_is_not_settings_is_one_line(tmp_path, capsys, text, phrase):
    model = copy_model(tmp_path / "m")
    (model / "config.json").write_text(text)
    assert phrase in _refusal(["model-report", "--model", str(model), "--text", "x"], capsys)


@pytest.mark.parametrize("key, value", [("hidden_size", "128"), ("hidden_size", -4), ("hidden_size", 128.5),
                                        ("num_local_experts", 0), ("num_hidden_layers", True),
                                        ("head_dim", "big"), ("num_hidden_layers", 10 ** 6)])
def test_a_size_that_is_not_a_positive_whole_number_is_one_line(tmp_path, capsys, key, value):
    model = copy_model(tmp_path / "m", {key: value})
    line = _refusal(["model-report", "--model", str(model), "--text", "x"], capsys)
    assert f"config.json's {key} is" in line
    assert "positive whole number" in line or "at most 1,024" in line


def test_out_of_memory_is_named_with_the_budget_advice(tmp_path, monkeypatch, capsys):
    import transformers

    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_memory)
    with pytest.raises(ValueError, match="out of memory while loading the weights of 'pydoc-mixtral'; the memory "
                                         "budget is .* \\(MOE_SCOPE_MEMORY_GB\\)"):
        load_model(BUNDLED_MODEL, tokens=16)
    monkeypatch.undo()
    import moe.hf.instrument
    monkeypatch.setattr(moe.hf.instrument, "run_model", no_memory)
    line = _refusal(["model-report", "--model", BUNDLED_MODEL, "--text", "x"], capsys)
    assert "out of memory while running this command" in line and "MOE_SCOPE_MEMORY_GB" in line


def test_the_kept_models_and_the_next_load_share_one_byte_budget(tmp_path, monkeypatch):
    from moe.hf import cache as model_cache

    a, b = copy_model(tmp_path / "a"), copy_model(tmp_path / "b")
    est = model_estimate(str(a), 64)
    resident = est["weights"] + est["tokenizer"]
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str((est["total"] + resident // 2) / GiB))  # one fits, not two
    model_cache.clear()
    try:
        first = model_cache.get(str(a), 64)
        assert model_cache.get(str(a), 64) is first and model_cache.kept_paths() == [str(a)]
        model_cache.get(str(b), 64)
        assert model_cache.kept_paths() == [str(b)]  # a was dropped before b was loaded
        assert model_cache.held_bytes() == resident
        monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str((est["total"] + resident + 4096) / GiB))  # two fit
        model_cache.get(str(a), 64)
        assert model_cache.kept_paths() == [str(b), str(a)]
        monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str((est["total"] - 1) / GiB))  # not even one
        with pytest.raises(ValueError, match="over the memory budget"):
            model_cache.get(str(copy_model(tmp_path / "c")), 64)
    finally:
        model_cache.clear()


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent (pytest, large after
# many tests), while VmHWM belongs to the new process image.
PEAK = """
import sys
from moe.cli.main import main
code = main(["model-report", "--model", sys.argv[1], "--text", "x"])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(code, int(hwm.split()[1]) * 1024)
"""


def test_the_inflated_directory_is_refused_before_its_memory_is_allocated(tmp_path):
    """Measured: a process that runs model-report on it under a 1 GiB budget peaks far below the 2.7 GB a load
    would take (the interpreter, torch and transformers take ~0.4 GiB)."""
    inflated = copy_model(tmp_path / "inflated", {"head_dim": 262144}, drop="self_attn")
    env = {**os.environ, "MOE_SCOPE_MEMORY_GB": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PEAK, str(inflated)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    code, peak = map(int, proc.stdout.split()[-2:])
    assert code == 2 and "lack 16 tensors" in proc.stderr
    assert peak < 0.8 * GiB, f"peak RSS {peak / GiB:.2f} GiB"


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss",
                                    "ernie4_5_moe"])
def test_every_family_saved_by_transformers_passes_the_checks_and_loads(tmp_path, family):
    """The tensor check renames as transformers does, and sizes saved under the config class's other name
    count (transformers 5 saves Qwen3-MoE's num_experts as num_local_experts)."""
    from moe.hf.text import save_tokenizer
    from tests.model_support import tiny_model

    path = tmp_path / family
    tiny_model(family, layers=2).save_pretrained(path)
    save_tokenizer(str(path))
    loaded = load_model(str(path), tokens=32)
    assert loaded.layers == ([1] if family == "deepseek_v3" else [0, 1])
