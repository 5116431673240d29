"""The README's expert-parallel snippet runs as written: contiguous run, plan from its load, planned run."""
from __future__ import annotations

import io
import os
import pathlib
import re
import subprocess
import sys

import pandas as pd

from ep_support import assert_group_gone

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_block(needle: str) -> str:
    """The README's ```bash block that contains `needle` (exactly one)."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S) if needle in b]
    assert len(blocks) == 1, f"{len(blocks)} README bash blocks contain {needle!r}"
    return blocks[0]


def test_the_readme_planner_snippet_runs_as_written(tmp_path):
    block = readme_block("from moe.parallel.placement import plan")
    runs = [line for line in block.splitlines() if line.startswith("torchrun ")]
    assert len(runs) == 2 and all(" $FLAGS " in line for line in runs)  # both runs carry the same workload
    venv_bin = str(pathlib.Path(sys.executable).parent)  # its `python` and `torchrun`
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.communicate()
        assert_group_gone(proc.pid)
    assert proc.returncode == 0, err[-2000:]
    note = out.splitlines()[0]
    assert note.startswith(("planned 2 redundant slots", "kept the current placement")), note
    assert (tmp_path / "contiguous.json").is_file() and (tmp_path / "plan.json").is_file()
    per_rank = pd.read_csv(io.StringIO(out.split("# per_rank\n")[1].split("# traffic")[0]))
    assert per_rank["assignments"].sum() == 4096 * 2  # the same 4096 tokens, top-2, dropless
