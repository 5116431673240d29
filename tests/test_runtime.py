"""Process tuning of the dashboard's server: the gc freeze and the thread count of small CPU forwards."""
import pathlib
import subprocess
import sys

import torch

from dashboard import runner
from dashboard.presets import CONTROL_DEFAULTS
from dashboard.state import spec_from_controls

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_freeze_moves_startup_objects_out_of_the_collector_once():
    code = ("import gc, torch, pandas, plotly.graph_objects\n"
            "from dashboard import runtime\n"
            "before = len(gc.get_objects())\n"
            "runtime.freeze_startup_objects(); frozen = gc.get_freeze_count()\n"
            "runtime.freeze_startup_objects()\n"
            "print(before, frozen, gc.get_freeze_count(), len(gc.get_objects()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    before, frozen, again, tracked = map(int, out.stdout.split())
    assert frozen > 0.9 * before  # nearly everything alive after the imports is frozen...
    assert again == frozen        # ...once per process
    assert tracked < 0.1 * before  # what a full collection still walks


def test_a_small_cpu_forward_runs_on_one_thread_and_restores_the_count():
    small = spec_from_controls(dict(CONTROL_DEFAULTS)).config
    large = spec_from_controls({**CONTROL_DEFAULTS, "d_model": 768, "d_expert": 3072}).config
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with runner._cpu_threads(small, 512):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with runner._cpu_threads(large, 512):  # 512·2·3·768·3072 multiply-adds: keeps every thread
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
