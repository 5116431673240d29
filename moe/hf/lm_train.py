"""Train a bundled MoE language model: a small Mixtral or DeepSeek-V3 (moe.hf.lm_arch) on the Python reference
(`pydoc_data.topics`).

Bytes in, bytes out; 90/10 split by topic (whole topics are held out); seeded end to end. A length curriculum
(LMTrainConfig.curriculum) ends at the context the model's config declares; the held-out bits per byte are
measured in windows of 128, 256 and that context. `python -m moe train-lm [--arch ...] --out DIR` runs `train_lm`
and prints the held-out numbers.
"""
from __future__ import annotations

import math
import os
import random

import torch

from moe.hf.lm_arch import balance_biases, capture_selection, model_class, model_config, selected_top1
from moe.hf.lm_config import REPORT_FILE, LMTrainConfig, check_lm_training_budget, check_out_dir, eval_chunk
from moe.hf.text import CHAR_CLASSES, EOS_ID, bits_per_byte, char_classes, encode, save_tokenizer, unigram_entropy_bits
from moe.jsonio import dumps
from moe.metrics import normalized_mutual_information




def split_topics(holdout: float, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """(train, held_out) topic dicts: topics in a seeded order go to held-out until it has ≥ holdout of the bytes."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    random.Random(seed).shuffle(names)
    total = sum(len(topics[n].encode()) for n in names)
    held, size = {}, 0
    for name in names:
        if size >= holdout * total:
            break
        held[name] = topics[name]
        size += len(topics[name].encode())
    train = {n: topics[n] for n in sorted(topics) if n not in held}
    return train, dict(sorted(held.items()))


def join_ids(docs: dict[str, str]) -> torch.Tensor:
    """Byte ids of the documents, each followed by EOS (N,)."""
    ids: list[int] = []
    for text in docs.values():
        ids += encode(text) + [EOS_ID]
    return torch.tensor(ids, dtype=torch.long)


def build_model(cfg: LMTrainConfig):
    """The architecture at initialisation, drawn from cfg.seed (a local generator: no global RNG touched)."""
    with torch.random.fork_rng(devices=[]):  # HF init draws from the global RNG; restore it afterwards
        torch.manual_seed(cfg.seed)
        model = model_class(cfg)(model_config(cfg))
    return model.float()


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, seq_len: int) -> dict:
    """Held-out bits per byte (EOS targets excluded), per-layer top-1 expert NMI with the byte's class, and
    per-layer max/mean of the experts' selected-token counts."""
    model.eval()
    n = (ids.numel() // seq_len) * seq_len
    windows = ids[:n].view(-1, seq_len)  # (W, L)
    nll, count, top1, loads = 0.0, 0, [], 0
    with capture_selection(model) as picks:
        for chunk in windows.split(eval_chunk(seq_len)):
            out = model(input_ids=chunk, output_router_logits=True)
            logits = out.logits[:, :-1].float()  # (b, L-1, V)
            target = chunk[:, 1:]  # (b, L-1)
            keep = target != EOS_ID
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     reduction="none").view_as(target)
            nll += float(loss[keep].sum())
            count += int(keep.sum())
            first, load = _routing(out.router_logits, picks, model.config.num_experts_per_tok)
            top1.append(first)  # (layers, b·L)
            loads = loads + load  # (layers, E)
    experts = torch.cat(top1, dim=1).numpy()  # (layers, W·L)
    classes = char_classes(windows.reshape(-1).numpy())  # (W·L,)
    nmi = [normalized_mutual_information(layer, classes) for layer in experts]
    held_bytes = ids[ids != EOS_ID].numpy()
    return {"bits_per_byte": bits_per_byte(nll / count), "unigram_bits": unigram_entropy_bits(held_bytes),
            "nmi": nmi, "tokens": count, "load_max_over_mean": (loads.max(1).values / loads.mean(1)).tolist()}


def _routing(router_logits, picks, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 selected expert per layer (layers, T), selected-token count per layer and expert (layers, E)):
    from the bias routers' own selection when the model has them (picks), else the top-k of the logits."""
    E = router_logits[0].shape[-1]
    if picks:
        index = torch.stack([torch.cat([i for i, _ in seen]) for seen in picks])  # (layers, T, K)
        first = selected_top1(picks)  # (layers, T); clears picks
    else:
        index = torch.stack([r.topk(top_k, dim=-1).indices for r in router_logits])  # (layers, T, K)
        first = index[..., 0]  # the largest logit is the top-1 (layers, T)
    load = torch.zeros(index.shape[0], E).scatter_add_(1, index.flatten(1), torch.ones(index.flatten(1).shape))
    return first, load  # (layers, T), (layers, E)


def _lr(step: int, cfg: LMTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(cfg: LMTrainConfig, out_dir: str, progress=None) -> dict:
    """Train, save the model + tokenizer + training.json under out_dir, and return the report dict.

    Refused before anything is built (ValueError) when out_dir is not a place to write a model or the run
    would not fit the memory budget."""
    check_out_dir(out_dir)
    check_lm_training_budget(cfg)
    train_docs, held_docs = split_topics(cfg.holdout, cfg.seed)
    train_ids, held_ids = join_ids(train_docs), join_ids(held_docs)
    model = build_model(cfg)
    at_init = evaluate(model, held_ids, cfg.seq_len)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    with capture_selection(model) as picks:
        for step in range(cfg.steps):
            length = phase_length(cfg, step)
            starts = torch.randint(0, train_ids.numel() - length, (cfg.phase_batch(length),), generator=g)  # (b,)
            batch = torch.stack([train_ids[s: s + length] for s in starts.tolist()])  # (b, L)
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg)
            out = train_step(model, opt, batch, picks, cfg.bias_rate)
            if progress is not None:
                progress(step + 1, float(out.loss.detach()), {**_balance_figure(out, picks), "len": length})
    at_length = {n: evaluate(model, held_ids, n) for n in cfg.eval_lengths()}
    trained = at_length[cfg.seq_len]
    report = {"config": cfg.report(), "train_topics": len(train_docs), "held_out_topics": list(held_docs),
              "held_out_bytes": trained["tokens"], "bits_per_byte": trained["bits_per_byte"],
              "unigram_bits": trained["unigram_bits"],
              "reduction": 1 - trained["bits_per_byte"] / trained["unigram_bits"],
              "nmi_trained": trained["nmi"], "nmi_init": at_init["nmi"], "char_classes": list(CHAR_CLASSES),
              "load_max_over_mean": trained["load_max_over_mean"],
              "bits_per_byte_at": {str(n): r["bits_per_byte"] for n, r in at_length.items()}}
    save_model(model, out_dir, report)
    return report


def phase_length(cfg: LMTrainConfig, step: int) -> int:
    """The curriculum's sequence length at `step`: each length gets an equal share of the steps, in order."""
    return cfg.curriculum[min(step * len(cfg.curriculum) // cfg.steps, len(cfg.curriculum) - 1)]


def train_step(model, opt, batch: torch.Tensor, picks: list, bias_rate: float):
    """One optimizer step on batch (b, L); then, for bias routers, the aux-loss-free bias update from this
    step's selections (after the step: the bias is a buffer, outside the loss and the gradients)."""
    out = model(input_ids=batch, labels=batch, output_router_logits=True)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if picks:
        balance_biases(model, picks, bias_rate)
    return out


def _balance_figure(out, picks: list) -> dict[str, float]:
    """The progress bar's balance number: the aux loss (Mixtral), or none to show (bias routers balance by rule)."""
    return {} if picks else {"aux": float(out.aux_loss.detach())}


def save_model(model, out_dir: str, report: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    model.config.output_router_logits = False
    model.save_pretrained(out_dir)
    save_tokenizer(out_dir)
    with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
        f.write(dumps(report, indent=1))


def format_report(report: dict) -> str:
    """The printed summary: held-out bits per byte vs the unigram entropy, and NMI per layer."""
    lines = [f"held-out topics: {len(report['held_out_topics'])} ({report['held_out_bytes']} bytes scored)",
             f"held-out bits per byte: {report['bits_per_byte']:.3f} (windows of {report['config']['seq_len']} bytes)",
             *(f"  in windows of {n} bytes: {bits:.3f}" for n, bits in report.get("bits_per_byte_at", {}).items()),
             f"byte-unigram entropy of the same text: {report['unigram_bits']:.3f} bits",
             f"reduction: {abs(100 * report['reduction']):.1f}% "
             f"{'below' if report['reduction'] >= 0 else 'above'} the unigram figure",
             "NMI(top-1 expert; character class) per layer: layer  trained  init"]
    for i, (a, b) in enumerate(zip(report["nmi_trained"], report["nmi_init"])):
        lines.append(f"  {i}  {a:.3f}  {b:.3f}")
    return "\n".join(lines)
