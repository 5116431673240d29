"""`MoeScopeCallback`: record a Hugging Face `Trainer` run's routing with a RoutingRecorder.

Attached in `on_train_begin` (the model the Trainer passes), each optimizer step written in `on_step_end` under
`state.global_step`, closed in `on_train_end`. Only the main process (`state.is_world_process_zero`) records: other
ranks get no hooks and write no files (their routing is their own shard's; the log is rank 0's view).
"""
from __future__ import annotations

from transformers import TrainerCallback

from moe.record.recorder import RoutingRecorder


class MoeScopeCallback(TrainerCallback):
    """`Trainer(..., callbacks=[MoeScopeCallback("runs/a")])` writes the routing log of the run to runs/a."""

    def __init__(self, path: str, every: int = 1, tokens: bool = False, flush_seconds: float = 1.0) -> None:
        self.path, self.every, self.tokens, self.flush_seconds = path, every, tokens, flush_seconds
        self.recorder: RoutingRecorder | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.recorder is None:
            self.recorder = RoutingRecorder(kwargs["model"], self.path, every=self.every, tokens=self.tokens,
                                            flush_seconds=self.flush_seconds)

    def on_step_end(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.step_end(state.global_step)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.flush()  # training pauses here: put the steps it buffered on disk for a live viewer

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
