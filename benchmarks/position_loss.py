"""Is a bundled model as good past position 128 as before it? Held-out text (the topics train-lm held out) of 2,048
bytes through `python -m moe model-report` (JSON), then the mean of its `token_loss_bits` before and after position
128: the model reads the text in windows of its context, so the loss after 128 must be no higher than before.
Usage: .venv/bin/python benchmarks/position_loss.py moe/models/pydoc-mixtral
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe.hf.lm_train import split_topics  # noqa: E402


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "moe" / "models" / "pydoc-mixtral")
    _, held = split_topics(0.1, 0)
    text = "".join(held.values()).encode()[:2048].decode("utf-8", "ignore")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    out = subprocess.run([sys.executable, "-m", "moe", "model-report", "--model", model, "--text-file", f.name,
                          "--max-tokens", "2048", "--format", "json"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    doc = json.loads(out)
    bits = doc["token_loss_bits"]
    before, after = bits[:127], bits[127:]
    print(f"{model}: tokens {len(bits) + 1}, context {doc['context']}, windows {doc['windows']}, mean bits/token "
          f"before position 128: {sum(before) / len(before):.3f}, after: {sum(after) / len(after):.3f}")


if __name__ == "__main__":
    main()
