"""Instrumented forward (engine in every MoE layer + statistics + traces to host) against the plain
transformers forward of the same model, at the bundled model and at a random mid-size Mixtral.

    python benchmarks/bench_model.py            # 15 interleaved repeats per case
    python benchmarks/bench_model.py --repeats 5

Both paths get the same token ids (one sequence, cut to the model's context so each is one forward of the same
tokens: like for like), fp32, torch.inference_mode, default threads.
The plain path is an un-instrumented deep copy (the same weights); medians of interleaved runs.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from moe.hf.instrument import instrument, run_model  # noqa: E402
from moe.hf.load import BUNDLED_MODEL  # noqa: E402
from moe.hf.windows import model_context  # noqa: E402

RATIO_TARGET = 1.3


def bundled_case(tokens: int):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, local_files_only=True).eval()
    from pydoc_data.topics import topics
    text = "".join(topics[k] for k in sorted(topics))
    # a longer text would be one long plain forward against the engine's windows: cut at the context
    ids = torch.tensor(list(text.encode()[:min(tokens, model_context(plain.config, BUNDLED_MODEL))]))  # (S,)
    return "bundled (pydoc-mixtral)", plain, ids


def midsize_case(tokens: int):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=8, num_local_experts=16,
                        num_experts_per_tok=2, max_position_embeddings=2 * tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = MixtralForCausalLM(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (tokens,))  # (S,)
    return "mid-size (D512, L4, E16, K2)", plain, ids


def time_case(name: str, plain, ids: torch.Tensor, repeats: int) -> dict:
    model = copy.deepcopy(plain)
    instrument(model)

    def run_plain():
        with torch.inference_mode():
            plain(input_ids=ids[None], use_cache=False).logits.float().cpu()

    def run_engine():
        run_model(model, ids)

    for fn in (run_plain, run_engine):  # warm-up
        fn()
    times = {"plain": [], "engine": []}
    for _ in range(repeats):
        for key, fn in (("plain", run_plain), ("engine", run_engine)):
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e3)
    plain_ms, engine_ms = statistics.median(times["plain"]), statistics.median(times["engine"])
    return {"case": name, "tokens": ids.numel(), "plain_ms": plain_ms, "engine_ms": engine_ms,
            "ratio": engine_ms / plain_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 gives stable numbers on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # this benchmark process only
    rows = []
    cases = [midsize_case]
    if Path(BUNDLED_MODEL, "model.safetensors").is_file():
        cases.insert(0, bundled_case)
    else:
        print(f"bundled model missing at {BUNDLED_MODEL}: run python -m moe train-lm --out {BUNDLED_MODEL}")
    for make in cases:
        rows.append(time_case(*make(args.tokens), args.repeats))
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} (medians, ms)")
    print(f"{'case':30} {'tokens':>6} {'plain':>9} {'engine+stats':>13} {'ratio':>6}  target ≤ {RATIO_TARGET}")
    ok = True
    for r in rows:
        passed = r["ratio"] <= RATIO_TARGET
        ok &= passed
        print(f"{r['case']:30} {r['tokens']:>6} {r['plain_ms']:>9.1f} {r['engine_ms']:>13.1f} "
              f"{r['ratio']:>6.2f}  {'ok' if passed else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
