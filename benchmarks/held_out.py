"""Held-out bits per byte of a bundled model, re-measured from its saved weights: the topics train-lm held out
(the same split: holdout and seed from the model's training.json), in windows of 128, 256 and the declared context.
Usage: .venv/bin/python benchmarks/held_out.py moe/models/pydoc-mixtral [moe/models/pydoc-deepseek ...]
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe.hf.lm_config import read_training_report  # noqa: E402
from moe.hf.lm_train import evaluate, join_ids, split_topics  # noqa: E402
from moe.hf.load import load_model  # noqa: E402
from moe.hf.text import EOS_ID  # noqa: E402


def main() -> None:
    for path in sys.argv[1:] or [str(ROOT / "moe" / "models" / "pydoc-mixtral")]:
        saved, _ = read_training_report(path)
        cfg = saved["config"]
        _, held = split_topics(cfg["holdout"], cfg["seed"])
        ids = join_ids(held)
        model = load_model(path).model
        declared = int(model.config.max_position_embeddings)
        found = {n: evaluate(model, ids, n)["bits_per_byte"] for n in sorted({128, 256, declared})}
        best = min(found.values())
        print(f"{path}: held-out bytes {int((ids != EOS_ID).sum())}; bits per byte "
              + ", ".join(f"at {n}: {v:.3f}" for n, v in found.items())
              + f"; training.json: {saved['bits_per_byte']:.3f}; declared context {declared} within "
              f"{100 * (found[declared] / best - 1):.1f}% of the best")


if __name__ == "__main__":
    main()
