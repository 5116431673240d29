"""Record the routing of a Hugging Face MoE model while it trains: per optimizer step, the tokens of every expert.

`RoutingRecorder(model, path)` puts a forward hook on the router of every sparse MoE block (the family's adapter,
moe.hf.adapters, names the block class and its router attribute). Every supported family's router returns
`(router_logits, top_k_weights, top_k_index)` and its block hands that very `top_k_index` to its experts, so the
recorder counts the ids the family itself selected — softmax top-k, sigmoid + selection bias, group-limited top-k —
without recomputing them; models whose forward drops the router logits (DeepSeek-V3, Ernie-4.5, ...) included.

Counts are one torch.bincount per layer and forward on the router's device, added into an (L, E) tensor there and
moved to the host once per optimizer step by `step_end(step)`, which adds the step to the routing log
(moe.traces.store.LogWriter) under the number it is given (the Trainer's `state.global_step`). Steps reach the disk
as one Parquet part per `flush_seconds` (default 1 s: the first step that ends that long after the last write, and
close()), so a viewer following the log sees a step within about a second while a fast loop on a GPU does not pay
for a file per step (nor leaves ten thousand files behind).

What counts as a training forward: the router is in training mode and autograd records (torch.is_grad_enabled()).
Evaluation forwards (model.eval(), torch.no_grad(), torch.inference_mode()) are not part of an optimizer step and
are not recorded. The forwards between two step_end calls add up (gradient accumulation). With gradient
checkpointing (non-reentrant, transformers' and torch's default), the forward that backward re-runs is skipped, so
each token counts once. Reentrant checkpointing (use_reentrant=True) runs the first forward under torch.no_grad():
nothing is recorded there — use the non-reentrant mode to record such a run.
"""
from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from moe.hf.adapters import Adapter, adapter_for, routing_config
from moe.hf.instrument import EngineBlock, decoder_layers
from moe.traces.store import LogWriter
from moe.validate import finite_number, int_at_least

SOURCE = "moe-scope-recorder"


def moe_blocks(model: nn.Module, adapter: Adapter) -> list[tuple[int, nn.Module]]:
    """(decoder-layer index, sparse MoE block) of every MoE layer; an instrumented model's blocks are unwrapped."""
    found = []
    for i, layer in enumerate(decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, EngineBlock):
            mlp = mlp.block
        if type(mlp).__name__ == adapter.block_class:
            found.append((i, mlp))
    if not found:
        raise ValueError(f"no {adapter.block_class} found in the model: it has no sparse MoE layer to record")
    return found


def _recomputing() -> bool:
    """True while autograd runs a backward pass: a forward then is gradient checkpointing's recompute.
    (torch has no public flag for it; the checkpoint code itself reads this graph-task id.)"""
    return torch._C._current_graph_task_id() != -1


class RoutingRecorder:
    """Hooks the routers of a Hugging Face MoE model and writes the routing log per optimizer step.

        with RoutingRecorder(model, "runs/a") as rec:
            for step, batch in enumerate(batches, start=1):
                model(**batch).loss.backward(); opt.step(); opt.zero_grad()
                rec.step_end(step)
    """

    def __init__(self, model: nn.Module, path: str, every: int = 1, tokens: bool = False,
                 flush_seconds: float = 1.0) -> None:
        self.every = int_at_least("every", every, 1)
        self.flush_seconds = finite_number("flush_seconds", flush_seconds, minimum=0)
        self.tokens = bool(tokens)
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        adapter = adapter_for(model_type)
        blocks = moe_blocks(model, adapter)
        sizes = {(c.n_experts, c.top_k) for c in (routing_config(b, adapter) for _, b in blocks)}
        if len(sizes) != 1:
            raise ValueError(f"the MoE layers of this {model_type} model differ in experts or top-k {sorted(sizes)}; "
                             f"the routing log needs one expert count")
        (self.n_experts, self.top_k), = sizes
        self.layers = [str(i) for i, _ in blocks]  # labelled by decoder-layer index
        self.writer = LogWriter(path, self.layers, self.n_experts, source=SOURCE, top_k=self.top_k,
                                meta={"model_type": model_type, "n_experts": self.n_experts, "top_k": self.top_k,
                                      "every": self.every})
        self._counts: Tensor | None = None          # (L, E) int64 on the first router's device; None: no forward yet
        self._token_parts: list[tuple[int, Tensor, Tensor]] = []  # (layer position, ids (T, K), weights (T, K))
        self._flushed_at = time.monotonic()
        self._handles = [getattr(block, adapter.router).register_forward_hook(partial(self._on_router, pos))
                         for pos, (_, block) in enumerate(blocks)]

    def _on_router(self, pos: int, module: nn.Module, inputs, output) -> None:
        if not (module.training and torch.is_grad_enabled()) or _recomputing():
            return  # an evaluation forward, or the checkpointed forward backward re-runs
        weights, index = output[1].detach(), output[2].detach()  # (T, K) each: the family's own selection
        if self._counts is None:
            self._counts = torch.zeros(len(self.layers), self.n_experts, dtype=torch.int64, device=index.device)
        per_expert = torch.bincount(index.reshape(-1), minlength=self.n_experts)  # (E,) on the router's device
        self._counts[pos].add_(per_expert.to(self._counts.device))
        if self.tokens:
            self._token_parts.append((pos, index.reshape(-1, self.top_k), weights.reshape(-1, self.top_k)))

    def step_end(self, step: int) -> bool:
        """Close optimizer step `step`: write what its training forwards routed when `step` is a multiple of
        `every` and there was one. Returns whether the step was written."""
        counts, parts = self._counts, self._token_parts
        self._counts, self._token_parts = None, []
        if counts is None or int(step) % self.every:
            return False
        host = counts.cpu().numpy()  # (L, E): the step's one transfer of counts to the host
        self.writer.write_step(int(step), host, _token_arrays(parts, counts.device) if self.tokens else None)
        if time.monotonic() - self._flushed_at >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the steps ended since the last write as one part file (a no-op when there are none)."""
        self.writer.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        """Remove the hooks and flush. Forwards after the last step_end belong to no step and are dropped."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._counts, self._token_parts = None, []
        self.writer.close()

    def __enter__(self) -> "RoutingRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _token_arrays(parts: list[tuple[int, Tensor, Tensor]], device: torch.device) -> dict | None:
    """The step's per-token rows for LogWriter: layer position (N,), ids (N, K), weights (N, K) float32."""
    if not parts:
        return None
    layer = torch.cat([torch.full((ids.shape[0], 1), pos, dtype=torch.int64, device=device)
                       for pos, ids, _ in parts])                                   # (N, 1)
    ids = torch.cat([i.to(device=device, dtype=torch.int64) for _, i, _ in parts])  # (N, K)
    packed = torch.cat([layer, ids], dim=1).cpu().numpy()                           # (N, 1 + K): one transfer
    weights = torch.cat([w.to(device=device, dtype=torch.float32) for _, _, w in parts]).cpu().numpy()  # (N, K)
    return {"layer": packed[:, 0], "ids": packed[:, 1:], "weights": np.ascontiguousarray(weights)}
