"""Cost of recording a training run (moe.record.RoutingRecorder) against the same training step without it,
on the bundled model (moe/models/pydoc-mixtral, loaded offline as moe.hf.load does).

    python benchmarks/bench_record.py                 # 15 interleaved repeats, 16 sequences of 128 bytes
    python benchmarks/bench_record.py --tokens        # also record per-token top-k ids and weights
    python benchmarks/bench_record.py --threads 1     # steadier numbers on a busy machine

A step is forward + backward + AdamW on one batch of pydoc text (train-lm's batch shape). The recorded step also
closes the step (step_end: counts to the host; with the default --flush-seconds 0, one Parquet part written every
step, the most the recorder ever writes; the recorder's own default writes once a second). Two deep copies of the
model (the same weights) train side by side, one step each in turn (which goes first alternates); the medians of
those steps are compared.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from moe.hf.lm_train import join_ids, split_topics  # noqa: E402
from moe.hf.load import BUNDLED_MODEL  # noqa: E402
from moe.record import RoutingRecorder  # noqa: E402

RATIO_TARGET = 1.05


def load_bundled():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, local_files_only=True, dtype="auto",
                                                use_safetensors=True)


def batches(batch: int, seq_len: int, count: int) -> list[torch.Tensor]:
    train, _ = split_topics(0.1, 0)
    ids = join_ids(train)  # (N,)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, ids.numel() - seq_len, (count, batch), generator=g)  # (count, b)
    return [torch.stack([ids[s: s + seq_len] for s in row.tolist()]) for row in starts]  # each (b, L)


def trainer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(ids: torch.Tensor) -> None:
        out = model(input_ids=ids, labels=ids)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return step


def measure(repeats: int, batch: int, seq_len: int, tokens: bool, flush_seconds: float, out_dir: str) -> dict:
    base = load_bundled().train()
    plain, recorded = copy.deepcopy(base), copy.deepcopy(base)
    step_plain, step_recorded = trainer(plain), trainer(recorded)
    data = batches(batch, seq_len, repeats + 2)
    times = {"plain": [], "recorded": []}
    with RoutingRecorder(recorded, out_dir, tokens=tokens, flush_seconds=flush_seconds) as rec:
        def run_recorded(ids, n):
            step_recorded(ids)
            rec.step_end(n)
        for n, ids in enumerate(data, start=1):
            pair = [("plain", lambda: step_plain(ids)), ("recorded", lambda: run_recorded(ids, n))]
            for key, fn in pair[:: 1 if n % 2 else -1]:  # the order alternates: neither always runs second
                start = time.perf_counter()
                fn()
                if n > 2:  # the first two steps warm up both
                    times[key].append((time.perf_counter() - start) * 1e3)
    plain_ms, rec_ms = statistics.median(times["plain"]), statistics.median(times["recorded"])
    return {"plain_ms": plain_ms, "recorded_ms": rec_ms, "ratio": rec_ms / plain_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--tokens", action="store_true", help="record per-token top-k ids and weights too")
    parser.add_argument("--flush-seconds", type=float, default=0.0, help="RoutingRecorder's flush_seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if not Path(BUNDLED_MODEL, "model.safetensors").is_file():
        print(f"bundled model missing at {BUNDLED_MODEL}: run python -m moe train-lm --out {BUNDLED_MODEL}")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)  # this benchmark process only
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.repeats, args.batch, args.seq_len, args.tokens, args.flush_seconds, str(Path(tmp) / "log"))
    passed = r["ratio"] <= RATIO_TARGET
    print(f"bundled model, training step of {args.batch}x{args.seq_len} tokens, threads={torch.get_num_threads()}, "
          f"repeats={args.repeats} interleaved, per-token rows {'on' if args.tokens else 'off'}, "
          f"flush_seconds={args.flush_seconds:g} (medians, ms)")
    print(f"{'without recorder':>18} {'with recorder':>14} {'ratio':>6}  target ≤ {RATIO_TARGET}")
    print(f"{r['plain_ms']:>18.1f} {r['recorded_ms']:>14.1f} {r['ratio']:>6.3f}  {'ok' if passed else 'OVER'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
