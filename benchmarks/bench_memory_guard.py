"""The memory guard holds: each case runs in its own process; the peak RSS of its whole process tree is
compared with the budget and with the engine's estimate.

    MOE_SCOPE_MEMORY_GB=1 python benchmarks/bench_memory_guard.py [--only SUBSTRING]   (e.g. --only trace-report, --only model, --only train-lm)

--only runs the baseline and the cases whose name contains it (e.g. `trace-report`). The trace-report
cases read hostile trace files written before the cases run.

Columns: exit (2 = refused in one line), peak_MiB (ru_maxrss of the case's own process), tree_MiB (the peak of
the summed proportional set size (PSS: shared pages counted once) of every process the case started,
sampled every 20 ms: torchrun ranks, and ranks orphaned by
a kill, are found by an environment tag they inherit), over_base_MiB (the case's peak minus the peak of a process
that only imports the engine: what the case itself added), estimate_MiB (the estimate the guard checked; '-'
for refusals), added/estimate, tree/budget, and the verdict: "refused" (exit 2), "held" (tree peak within 1.5x
the budget) or "OVER". The budget covers the engine's memory; the ~300 MiB of the interpreter and libraries
sit in the tree peak too, so tree/budget is the stricter figure.

The model cases are directories an attacker could prepare (built in a temporary directory from the bundled
model): config.json inflated (head_dim 262144) with the attention tensors removed, 6 MB on disk, which
transformers would fill at the config's size; and a 32 MiB BPE tokenizer (900k merges, ~1 GiB once loaded).
Each runs `model-report` in its own process, which loads in-process (no worker processes): its peak RSS
is the tree's (RUSAGE_CHILDREN is not used: a forked helper reports its parent's RSS at the fork).
Compare their peaks with the 'import transformers' row (torch and transformers imported, nothing loaded).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe.memory import budget_bytes  # noqa: E402
from moe.proctree import memory_bytes  # noqa: E402
from moe.roots import MODELS_DIR  # noqa: E402

# Each case: (name, code run after the shared prelude; it sets `code` and `estimate`).
PRELUDE = """
import json, resource, sys
from moe import MoEConfig, MoELayer
from moe.cli.main import main
from moe.memory import budget_bytes, estimate_bytes
code, estimate = 0, None
"""
EPILOGUE = """
print(json.dumps({"exit": code, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "estimate": estimate}))
"""
BIG_REPORT = ["report", "--d-model", "4096", "--d-expert", "8192", "--n-experts", "64"]
FIT_REPORT = ["report", "--d-model", "1024", "--d-expert", "4096", "--n-experts", "16", "--dtype", "bfloat16",
              "--tokens", "2048", "--format", "csv"]
FIT_TRAIN = ["train", "--d-model", "256", "--d-expert", "1024", "--n-experts", "8", "--tokens", "2048",
             "--steps", "3", "--format", "csv"]
EP_JOB = """
from moe.cli.ep_report import run_ep_job
try:
    run_ep_job({W}, ["--repeats", "3"], timeout_s=600)
except ValueError as err:  # refused before launch (one line)
    code = 2
"""
CASES = [
    ("import only (baseline)", ""),
    ("report D4096 H8192 E64", f"code = main({BIG_REPORT!r})"),
    ("report --tokens 1e9", "code = main(['report', '--tokens', '1000000000'])"),
    ("train --clusters 1e6", "code = main(['train', '--clusters', '1000000'])"),
    ("report D1024 H4096 E16 bf16 T2048", f"""
cfg = MoEConfig(d_model=1024, d_expert=4096, n_experts=16, dtype='bfloat16')
estimate = estimate_bytes(cfg, 2048)['total']
import io, contextlib
with contextlib.redirect_stdout(io.StringIO()):
    code = main({FIT_REPORT!r})"""),
    ("layer set-up only D2048 H8192 E8 bf16", """
cfg = MoEConfig(d_model=2048, d_expert=8192, n_experts=8, dtype='bfloat16')
estimate = estimate_bytes(cfg, 1)['weights']
layer = MoELayer(cfg)"""),
    ("train D256 H1024 E8 T2048, 3 steps", f"""
from moe.cli.main import build_parser
from moe.cli.train import train_config_from_args
cfg = train_config_from_args(build_parser().parse_args({FIT_TRAIN!r}))
from moe.memory import estimate_training_bytes
estimate = estimate_training_bytes(cfg.layer_config(), cfg.tokens, n_maps=4, pool_batches=cfg.pool_batches,
                                   probe_tokens=cfg.probe_tokens, history=cfg.history)['total']
import io, contextlib
with contextlib.redirect_stdout(io.StringIO()):
    code = main({FIT_TRAIN!r})"""),
    ("dashboard: 4 seeds of D2048 H8192 E8 bf16", """
from dashboard import loaders
from dashboard.presets import CONTROL_DEFAULTS
from dashboard.links import spec_from_controls
results = []
for seed in range(4):  # four links, one after the other; each session keeps its result
    spec = spec_from_controls({**CONTROL_DEFAULTS, 'd_model': 2048, 'd_expert': 8192, 'dtype': 'bfloat16',
                               'seed': seed})
    try:
        results.append(loaders.run(spec))
    except ValueError as err:
        code = 2
estimate = budget_bytes()"""),
    ("train-lm --batch 100000000", """
import tempfile
code = main(['train-lm', '--out', tempfile.mkdtemp() + '/m', '--batch', '100000000'])"""),
    ("train-lm --steps 3 (batch 16)", """
import contextlib, io, tempfile
from moe.hf.lm_config import estimate_lm_training_bytes
from moe.hf.lm_config import LMTrainConfig
estimate = estimate_lm_training_bytes(LMTrainConfig(steps=3))['total']
with contextlib.redirect_stdout(io.StringIO()):
    code = main(['train-lm', '--out', tempfile.mkdtemp() + '/m', '--steps', '2', '--threads', '1'])"""),
    # Traces (issue #15): files written by write_trace_files() into $MOE_BENCH_TRACES before the cases run.
    ("trace-report 67 B JSONL, --n-experts 16384",
     "import os; code = main(['trace-report', os.environ['MOE_BENCH_TRACES'] + '/tiny.jsonl', '--n-experts', "
     "'16384'])"),
    ("trace-report Parquet 2M tokens x 8 experts",
     "import os; code = main(['trace-report', os.environ['MOE_BENCH_TRACES'] + '/expands.parquet'])"),
    ("trace-report one 10 MB JSONL line",
     "import os; code = main(['trace-report', os.environ['MOE_BENCH_TRACES'] + '/long_line.jsonl', "
     "'--n-experts', '8'])"),
    # Expert parallel (issue #15): a torchrun job's whole tree (torchrun + W ranks) is what counts.
    ("ep job W=8, default layer", EP_JOB.format(W=8)),
    ("ep job W=2, default layer", EP_JOB.format(W=2)),
]


def write_trace_files(folder: str) -> None:
    """The attacker inputs of issue #15: 67 bytes, a small Parquet file of one 16M-row record, a 10 MB line."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    with open(os.path.join(folder, "tiny.jsonl"), "w") as f:
        f.write('{"step":0,"layer":0,"num_tokens":1,"topk":2,"top_indices":[[0,1]]}\n')
    T, E = 2_000_000, 8
    routed = np.zeros((T, E), bool)
    routed[:, :2] = True
    table = pa.table({"step": np.zeros(T * E, np.int64), "layer": np.zeros(T * E, np.int64),
                      "token": np.repeat(np.arange(T), E), "expert": np.tile(np.arange(E), T),
                      "router_logit": np.zeros(T * E, np.float32), "routed": routed.ravel()})
    delta = {name: "DELTA_BINARY_PACKED" for name in ("step", "layer", "token", "expert")}  # ~300 KB on disk
    pq.write_table(table, os.path.join(folder, "expands.parquet"), row_group_size=T * E, compression="zstd",
                   use_dictionary=False, column_encoding=delta)
    tokens = 400_000  # 26 bytes per token: ~10 MB on one line
    line = '{"step": 0, "layer": 0, "num_tokens": %d, "topk": 8, "top_indices": [%s]}\n' % (
        tokens, ", ".join(["[0, 1, 2, 3, 4, 5, 6, 7]"] * tokens))
    with open(os.path.join(folder, "long_line.jsonl"), "w") as f:
        f.write(line)


HELD = 1.5  # an accepted case's tree may peak at 1.5x the budget (issue #15)
TAG = "MOE_BENCH_CASE"


def tree_rss(tag: str) -> int:
    """Summed proportional set size (bytes) of every live process whose environment carries TAG=tag: pages
    shared between the processes (torch's libraries in every rank) count once, as the machine pays them."""
    needle, tagged = f"{TAG}={tag}".encode(), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "environ").read_bytes().split(b"\0"):
                tagged.append((int(proc.name), 0))
        except OSError:  # the process ended while we looked
            continue
    return memory_bytes(tagged)


def _bpe_tokenizer(path: Path, merges: int) -> None:
    """A valid byte-free BPE tokenizer.json with `merges` merges (~36 bytes each): what a large vocabulary weighs."""
    letters = [f"c{i}" for i in range(1000)]
    vocab = {t: i for i, t in enumerate(letters)}
    pairs = []
    for i in range(merges):
        a, b = letters[i % 1000], letters[(i // 1000) % 1000]
        pairs.append([a, b])
        vocab[a + b] = len(vocab)
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["model"] = {"type": "BPE", "vocab": vocab, "merges": pairs, "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                    "byte_fallback": False, "ignore_merges": False}
    (path / "tokenizer.json").write_text(json.dumps(tok))


BUNDLED_MODEL = str(MODELS_DIR / "pydoc-mixtral")  # moe.hf.load.BUNDLED_MODEL, without importing transformers


def build_model_dirs(tmp: Path) -> None:
    """The attacker's directories (run in a child: torch imported here would raise every later case's
    ru_maxrss, which Linux carries from the forking parent's image across exec)."""
    import shutil

    from safetensors.torch import load_file, save_file

    inflated, tokenizer = tmp / "inflated", tmp / "huge-tokenizer"
    for path in (inflated, tokenizer):
        shutil.copytree(BUNDLED_MODEL, path)
    config = json.loads((inflated / "config.json").read_text())
    (inflated / "config.json").write_text(json.dumps({**config, "head_dim": 262144}))
    weights = inflated / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "self_attn" not in k}, weights, {"format": "pt"})
    _bpe_tokenizer(tokenizer, 900_000)
    from transformers import AutoModelForCausalLM, MixtralConfig  # a 209 MiB model: the weights dominate
    cfg = MixtralConfig(vocab_size=257, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp / "mid")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(BUNDLED_MODEL, name), tmp / "mid" / name)


MODEL_CASE_NAMES = ("model-report bundled model, 512 tokens", "model-report 209 MiB model, 512 tokens",
                    "model dir: head_dim 262144, no attention", "model dir: 32 MiB BPE tokenizer")


def model_cases(tmp: Path) -> list[tuple[str, str]]:
    """The attacker's model directories, and the bundled model for comparison (accepted, with its estimate)."""
    subprocess.run([sys.executable, __file__, "--build-model-dirs", str(tmp)], check=True, cwd=ROOT)
    inflated, tokenizer = tmp / "inflated", tmp / "huge-tokenizer"
    report = "import io, contextlib\nwith contextlib.redirect_stdout(io.StringIO()):\n    code = main({!r})"
    return [
        ("import transformers (model baseline)", "import tokenizers, transformers.models.mixtral.modeling_mixtral, "
         "moe.hf.instrument, moe.hf.load, moe.hf.report, moe.hf.counterfactual"),
        ("model-report bundled model, 512 tokens", "from moe.hf.load import model_estimate\n"
         f"estimate = model_estimate({BUNDLED_MODEL!r}, 512)['total']\n" + report.format(
             ["model-report", "--model", BUNDLED_MODEL, "--text", "x = 1\n" * 100, "--max-tokens", "512"])),
        ("model-report 209 MiB model, 512 tokens", "from moe.hf.load import model_estimate\n"
         f"estimate = model_estimate({str(tmp / 'mid')!r}, 512)['total']\n" + report.format(
             ["model-report", "--model", str(tmp / "mid"), "--text", "x = 1\n" * 100, "--max-tokens", "512"])),
        ("model dir: head_dim 262144, no attention", report.format(
            ["model-report", "--model", str(inflated), "--text", "x"])),
        (f"model dir: {(tokenizer / 'tokenizer.json').stat().st_size >> 20} MiB BPE tokenizer", report.format(
            ["model-report", "--model", str(tokenizer), "--text", "x"])),
    ]


def run_case(code: str) -> dict:
    """Run one case in a fresh interpreter; sample its process tree until it and every descendant are gone."""
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: a pipe would fill
        proc = subprocess.Popen([sys.executable, "-c", PRELUDE + code + EPILOGUE], cwd=ROOT, env=env,
                                stdout=out, stderr=err, text=True)
        peak, deadline = 0, time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, tree_rss(tag))
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        left = tree_rss(tag)  # orphans still alive after the case's process exited
        out.seek(0), err.seek(0)
        out, err = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"case failed (exit {proc.returncode}):\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "tree": max(peak, result["peak"]), "left": left}


def verdict(r: dict, budget: int) -> str:
    if r["left"]:
        return "ORPHANS LEFT"
    if r["exit"] == 2:
        return "refused"
    return "held" if r["tree"] <= HELD * budget else "OVER"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    budget = budget_bytes()
    mib = 1024 ** 2
    cases = [case for i, case in enumerate(CASES) if i == 0 or args.only in case[0]]
    traces = tempfile.TemporaryDirectory()
    if any(name.startswith("trace-report") for name, _ in cases):  # hostile trace files, written once
        subprocess.run([sys.executable, __file__, "--write-traces", traces.name], check=True)
        os.environ["MOE_BENCH_TRACES"] = traces.name
    print(f"budget {budget / mib:.0f} MiB (MOE_SCOPE_MEMORY_GB={os.environ.get('MOE_SCOPE_MEMORY_GB', 'unset')})")
    print(f"{'case':<42} {'exit':>4} {'peak_MiB':>9} {'tree_MiB':>9} {'over_base_MiB':>13} {'estimate_MiB':>12} "
          f"{'added/est':>9} {'tree/budget':>11}  verdict")
    with tempfile.TemporaryDirectory() as tmp:
        if any(name.startswith("model") for name in MODEL_CASE_NAMES if args.only in name):
            cases += model_cases(Path(tmp))
        base = 0
        for name, code in cases:
            r = run_case(code)
            if name.startswith("import"):  # the baseline of the rows below it
                base = r["peak"]
            added = r["peak"] - base
            est = r["estimate"]
            est_text = "-" if est is None else f"{est / mib:.0f}"
            ratio = "-" if est is None else f"{added / est:.2f}"
            print(f"{name:<42} {r['exit']:>4} {r['peak'] / mib:>9.0f} {r['tree'] / mib:>9.0f} "
                  f"{int(round(added / mib)):>13} {est_text:>12} {ratio:>9} {r['tree'] / budget:>11.2f}  "
                  f"{verdict(r, budget)}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-traces"]:
        write_trace_files(sys.argv[2])
    elif sys.argv[1:2] == ["--build-model-dirs"]:
        build_model_dirs(Path(sys.argv[2]))
    else:
        main()
