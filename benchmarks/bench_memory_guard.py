"""The memory guard holds: each case runs in its own process; its peak RSS is compared with the budget
and with the engine's estimate.

    MOE_SCOPE_MEMORY_GB=1 python benchmarks/bench_memory_guard.py [WORD]   # WORD: only the cases naming it

Columns: exit (2 = refused in one line), peak_MiB (ru_maxrss of the case's process), over_base_MiB (peak
minus the peak of a process that only imports the engine: what the case itself added), estimate_MiB (the
estimate the guard checked; '-' for refusals), added/estimate and added/budget (the budget covers the
engine's memory, not the ~300 MiB of the interpreter and libraries). A refused case must add
~nothing; an accepted case must add no more than its estimate and stay under the budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe.memory import budget_bytes  # noqa: E402

# Each case: (name, code run after the shared prelude; it sets `code` and `estimate`).
PRELUDE = """
import json, resource, sys
from moe import MoEConfig, MoELayer
from moe.cli import main
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
from moe.cli import build_parser, train_config_from_args
cfg = train_config_from_args(build_parser().parse_args({FIT_TRAIN!r}))
from moe.memory import estimate_training_bytes
estimate = estimate_training_bytes(cfg.layer_config(), cfg.tokens, n_maps=4, pool_batches=cfg.pool_batches,
                                   probe_tokens=cfg.probe_tokens, history=cfg.history)['total']
import io, contextlib
with contextlib.redirect_stdout(io.StringIO()):
    code = main({FIT_TRAIN!r})"""),
    ("dashboard: 4 seeds of D2048 H8192 E8 bf16", """
from dashboard import runner
from dashboard.presets import CONTROL_DEFAULTS
from dashboard.state import spec_from_controls
results = []
for seed in range(4):  # four links, one after the other; each session keeps its result
    spec = spec_from_controls({**CONTROL_DEFAULTS, 'd_model': 2048, 'd_expert': 8192, 'dtype': 'bfloat16',
                               'seed': seed})
    try:
        results.append(runner.run(spec))
    except ValueError as err:
        code = 2
estimate = budget_bytes()"""),
    ("train-lm --batch 100000000", """
import tempfile
code = main(['train-lm', '--out', tempfile.mkdtemp() + '/m', '--batch', '100000000'])"""),
    ("train-lm --steps 2 (batch 16)", """
import contextlib, io, tempfile
from moe.lm_checks import estimate_lm_training_bytes
from moe.lm_train import LMTrainConfig
estimate = estimate_lm_training_bytes(LMTrainConfig(steps=2))['total']
with contextlib.redirect_stdout(io.StringIO()):
    code = main(['train-lm', '--out', tempfile.mkdtemp() + '/m', '--steps', '2', '--threads', '1'])"""),
]


def run_case(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code + EPILOGUE], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"case failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    budget = budget_bytes()
    mib = 1024 ** 2
    print(f"budget {budget / mib:.0f} MiB (MOE_SCOPE_MEMORY_GB={os.environ.get('MOE_SCOPE_MEMORY_GB', 'unset')})")
    print(f"{'case':<42} {'exit':>4} {'peak_MiB':>9} {'over_base_MiB':>13} {'estimate_MiB':>12} "
          f"{'added/est':>9} {'added/budget':>12}")
    base = None
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    for name, code in [c for i, c in enumerate(CASES) if i == 0 or only in c[0]]:  # the baseline always runs
        r = run_case(code)
        base = r["peak"] if base is None else base
        added = r["peak"] - base
        est = r["estimate"]
        est_text = "-" if est is None else f"{est / mib:.0f}"
        ratio = "-" if est is None else f"{added / est:.2f}"
        print(f"{name:<42} {r['exit']:>4} {r['peak'] / mib:>9.0f} {int(round(added / mib)):>13} {est_text:>12} "
              f"{ratio:>9} {max(added, 0) / budget:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
