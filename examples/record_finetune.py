"""Fine-tune the bundled MoE model with the Hugging Face Trainer and record its routing (moe.record).

python examples/record_finetune.py [LOG_DIR] [--steps 40]

LOG_DIR (default runs/pydoc-finetune, a new directory) receives the routing log: per optimizer step, the tokens
each expert of each MoE layer got. The evaluation every 10 steps is not recorded (it is not a training step).
Open the log with `python -m moe trace-report LOG_DIR`, or on the Runs page (Path on the server: LOG_DIR).
Needs `accelerate` (requirements.txt pins it); runs on a GPU when there is one, else on the CPU (a minute or two).
"""
import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from moe.hf.lm_train import join_ids, split_topics
from moe.hf.load import BUNDLED_MODEL
from moe.record import MoeScopeCallback

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("log_dir", nargs="?", default="runs/pydoc-finetune")
parser.add_argument("--steps", type=int, default=40)
args = parser.parse_args()

SEQ_LEN = 128
train_docs, held_docs = split_topics(holdout=0.1, seed=0)   # the bundled model's own split of the pydoc topics


def windows(ids: torch.Tensor) -> list[dict]:
    """Non-overlapping windows of SEQ_LEN byte ids, each its own next-byte target."""
    rows = ids[: len(ids) // SEQ_LEN * SEQ_LEN].view(-1, SEQ_LEN)  # (W, SEQ_LEN)
    return [{"input_ids": r, "labels": r} for r in rows]


model = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, local_files_only=True, dtype="auto",
                                             use_safetensors=True)
with tempfile.TemporaryDirectory() as scratch:                # the Trainer's output_dir; nothing is saved there
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=8,
                               learning_rate=1e-3, warmup_steps=5, eval_strategy="steps", eval_steps=10,
                               per_device_eval_batch_size=16, logging_steps=10, save_strategy="no",
                               report_to=[], use_cpu=not torch.cuda.is_available(), seed=0),
        train_dataset=windows(join_ids(train_docs)),
        eval_dataset=windows(join_ids(held_docs))[:32],
        callbacks=[MoeScopeCallback(args.log_dir)],           # the one line that records the run
    )
    trainer.train()

print(f"routing of {trainer.state.global_step} optimizer steps written to {args.log_dir}; open it with")
print(f"  python -m moe trace-report {args.log_dir}")
print(f"  streamlit run app.py   # Runs page, Path on the server: {args.log_dir}")
