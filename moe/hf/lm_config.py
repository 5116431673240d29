"""The `train-lm` settings (LMTrainConfig) and the checks made before anything is built: where it may write, and
whether the run fits the budget.

The memory estimate is an upper bound in bytes from the sizes alone (nothing allocated), measured against
the peak RSS of real runs by benchmarks/bench_memory_guard.py and tests/test_lm_checks.py.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass

from moe.hf.text import VOCAB_SIZE
from moe.jsonio import loads_strict
from moe.memory import RUNTIME_BYTES, BudgetError, budget_bytes, fit
from moe.roots import read_regular

REPORT_FILE = "training.json"  # written last by train-lm: its presence marks a directory train-lm wrote
REPORT_MAX_BYTES = 1 << 20     # train-lm writes a few KiB
TEXT_BYTES = 500_000  # the training text (pydoc_data.topics, ~466 kB) with room to spare
_F32 = 4
EVAL_WINDOWS = 64  # moe.hf.lm_train.evaluate's chunk of held-out 128-byte windows (fewer when longer: eval_chunk)
# Measured (default model, 1 thread; benchmarks/bench_memory_guard.py): a training step adds 12.5-16.5 MiB per
# sequence of 128 bytes, an evaluation ~170-250 MiB, and the held-out evaluation after training comes on top of
# what training left (freed memory stays with the process), so the two are added. The factors keep the estimate
# above the measurements (autograd keeps about the forward's tensors; evaluation frees each layer's as it goes).
# The default curriculum run (128 → 512-byte sequences) peaked at 860 MiB RSS (Mixtral; DeepSeek-V3 758 MiB),
# estimated at 1164 MiB and 1327 MiB.
TRAIN_FACTOR = 1.5
EVAL_FACTOR = 1 / 3


ARCHES = ("mixtral", "deepseek_v3")  # the transformers model_type train-lm builds
# Fields that only one architecture reads: training.json records a run's own fields only.
ARCH_FIELDS = {"mixtral": ("aux_coef",), "deepseek_v3": ("n_group", "topk_group", "shared_experts", "bias_rate")}


@dataclass(frozen=True)
class LMTrainConfig:
    # --- architecture (transformers' MixtralForCausalLM or DeepseekV3ForCausalLM)
    arch: str = "mixtral"
    hidden: int = 128
    d_expert: int = 128
    layers: int = 4
    experts: int = 8
    top_k: int = 2
    heads: int = 4
    # --- optimisation
    seq_len: int = 512        # the context: the longest training length, declared as max_position_embeddings
    curriculum: tuple[int, ...] = (128, 256, 512)  # training lengths, an equal share of the steps each, ending
    # at seq_len; a step holds batch sequences of the first length, the same bytes in fewer, longer sequences later
    batch: int = 16
    steps: int = 1500
    lr: float = 3e-3
    warmup: int = 40
    aux_coef: float = 0.02    # router_aux_loss_coef: keeps every expert in use
    holdout: float = 0.1      # fraction of the text's bytes held out, in whole topics
    seed: int = 0
    # --- deepseek_v3 only: group-limited routing, shared expert, aux-loss-free balancing (no aux loss)
    n_group: int = 4          # experts in n_group equal groups; a token picks from topk_group of them
    topk_group: int = 2
    shared_experts: int = 1   # always-on expert(s) of width d_expert, added to the routed output
    bias_rate: float = 1e-3   # u in b_e += u·sign(mean load − load_e) after every optimizer step

    def __post_init__(self) -> None:
        lengths = tuple(self.curriculum)
        if not lengths or list(lengths) != sorted(set(lengths)) or lengths[0] < 2 or lengths[-1] != self.seq_len:
            raise ValueError(f"curriculum {lengths} must be increasing lengths of at least 2 ending at seq_len "
                             f"{self.seq_len}; e.g. ({self.seq_len},) to train at one length")
        if self.steps < len(lengths):  # a length with no step: the model would declare a context it never trained at
            raise ValueError(f"--steps {self.steps} is fewer than the curriculum's {len(lengths)} lengths "
                             f"{lengths}: each length needs a step, so the model is trained at the {self.seq_len} "
                             f"positions it declares; give --steps {len(lengths)} or more")
        if self.arch not in ARCHES:
            raise ValueError(f"--arch {self.arch!r} is not one train-lm builds; give one of {', '.join(ARCHES)}")
        if self.arch == "deepseek_v3":
            per_group = self.experts // self.n_group if self.n_group > 0 and self.experts % self.n_group == 0 else 0
            if per_group < 2 or not 1 <= self.topk_group <= self.n_group or self.top_k > self.topk_group * per_group:
                raise ValueError(f"deepseek_v3: {self.experts} experts in {self.n_group} groups keeping "
                                 f"{self.topk_group} cannot serve top-{self.top_k}; give experts a multiple of "
                                 f"n_group with at least 2 per group and top_k ≤ topk_group·experts/n_group")

    def phase_batch(self, length: int) -> int:
        """Sequences per step at a curriculum length: batch × the first length's bytes, at least one sequence."""
        return max(1, self.batch * self.curriculum[0] // length)

    def eval_lengths(self) -> tuple[int, ...]:
        """The held-out window lengths train-lm reports: 128, 256 (when shorter) and the context."""
        return tuple(sorted({n for n in (128, 256) if n < self.seq_len} | {self.seq_len}))

    def report(self) -> dict:
        """The fields this architecture reads (training.json's "config")."""
        other = [name for arch, names in ARCH_FIELDS.items() if arch != self.arch for name in names]
        return {k: v for k, v in asdict(self).items() if k not in other}


def _sizes(cfg: LMTrainConfig) -> dict:
    shared = cfg.shared_experts if cfg.arch == "deepseek_v3" else 0
    return {"tokens": cfg.batch, "lengths": tuple(cfg.curriculum), "eval_lengths": cfg.eval_lengths(),
            "hidden": cfg.hidden, "d_expert": cfg.d_expert, "layers": cfg.layers, "experts": cfg.experts,
            "top_k": cfg.top_k, "heads": cfg.heads, "shared": shared}


def eval_chunk(length: int) -> int:
    """Held-out windows of `length` per evaluation forward: EVAL_WINDOWS × 128 bytes at most."""
    return max(1, EVAL_WINDOWS * 128 // length)


def _parts(s: dict) -> dict[str, int]:
    """Bytes of the heaviest training step of the curriculum (s["tokens"] sequences of the first length, the same
    bytes in fewer, longer sequences later), then the heaviest held-out evaluation (eval_chunk windows at a time,
    no gradients) on top (an upper bound)."""
    D, H, layers, E, V = s["hidden"], s["d_expert"], s["layers"], s["experts"], VOCAB_SIZE
    params = V * D + layers * (4 * D * D + 2 * D + E * D + 3 * (E + s["shared"]) * H * D) + D  # tied embedding,
    # attention (DeepSeek's latent attention at our sizes has fewer), norms, router, experts + shared, final norm
    first = s["lengths"][0]
    train = max(_step_bytes({**s, "seq_len": n}, max(1, s["tokens"] * first // n), TRAIN_FACTOR)
                for n in s["lengths"])
    evaluation = max(_step_bytes({**s, "seq_len": n}, eval_chunk(n), EVAL_FACTOR) for n in s["eval_lengths"])
    data = 16 * TEXT_BYTES + 4 * s["tokens"] * first * 8  # token ids (list + int64 tensor), the batch
    return {"weights": params * _F32, "optimizer": 3 * params * _F32, "training": train, "evaluation": evaluation,
            "data": data, "runtime": RUNTIME_BYTES}


def _step_bytes(s: dict, sequences: int, factor: float) -> int:
    """Activations of a forward on `sequences` windows, times `factor`, plus the logits and the aux loss's inputs."""
    L, D, H, E, K, heads, layers = (s[k] for k in ("seq_len", "hidden", "d_expert", "experts", "top_k", "heads",
                                                   "layers"))
    K = K + s["shared"]  # a shared expert processes every token: one more assignment per token
    T = sequences * L
    # Per layer: norms, q/k/v/o and rotary copies, the (B, heads, L, L) attention weights and softmax, router
    # logits/probs, and every (token, expert) assignment's gathered input, gate/up/act hidden and output.
    per_layer = T * (16 * D + 8 * E) + 3 * sequences * heads * L * L + T * K * (6 * D + 8 * H)
    head = 4 * T * VOCAB_SIZE + layers * T * E * (K + 4)  # logits, log-softmax, gradient; all layers' router outputs
    return int(factor * layers * per_layer * _F32) + head * _F32


def estimate_lm_training_bytes(cfg: LMTrainConfig) -> dict[str, int]:
    """Bytes of training cfg: weights, AdamW state, a step's activations, the evaluation's, data, runtime, total."""
    parts = _parts(_sizes(cfg))
    return {**parts, "total": sum(parts.values())}


def check_lm_training_budget(cfg: LMTrainConfig, budget: int | None = None) -> None:
    """Raise BudgetError (a ValueError) naming the largest --batch that fits when cfg is over the budget."""
    budget = budget_bytes() if budget is None else budget
    s = _sizes(cfg)
    parts = _parts(s)
    if sum(parts.values()) <= budget:
        return

    def cost(sizes: dict) -> int:
        return sum(_parts(sizes).values())
    changes = fit(cost, s, budget) if cost({**s, "tokens": 1}) <= budget else {}
    raise BudgetError("training this model", parts, budget, changes, s, {"tokens": "--batch"})


def check_out_dir(out: str) -> None:
    """ValueError unless `out` is a new directory (under a writable one), an empty directory, or a model
    directory train-lm wrote before (it holds training.json): never a file, a device or another directory."""
    if not out.strip():  # "" or a name of spaces: a folder nobody means
        raise ValueError("--out is empty; give a new or empty directory for the model")
    shown = repr(out if len(out) <= 80 else out[:77] + "...")
    try:
        mode = os.stat(out).st_mode
    except FileNotFoundError:
        return _check_parent(out, shown)
    except OSError as err:
        raise ValueError(f"--out {shown} cannot be used ({err.strerror}); give a new or empty directory") from None
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else "a device or special file"
        raise ValueError(f"--out {shown} is {kind}, not a directory; give a new or empty directory")
    if os.listdir(out) and not _written_by_train_lm(out):
        raise ValueError(f"--out {shown} is a directory that holds other files (no {REPORT_FILE} from train-lm); "
                         "give a new or empty directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {shown} is not writable; give a directory you can write to")


def _check_parent(out: str, shown: str) -> None:
    """The nearest existing folder above `out` takes a new folder: tried (one made and removed), since os.access
    says yes to root on /proc and /sys, where the save after training would fail."""
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        if not os.path.isdir(parent):
            raise NotADirectoryError
        os.rmdir(tempfile.mkdtemp(prefix=".moe-scope-check-", dir=parent))
    except OSError:
        raise ValueError(f"--out {shown} cannot be created under {parent!r} (not a writable directory); "
                         "give a new or empty directory") from None


def _written_by_train_lm(out: str) -> bool:
    """Whether `out` holds a training.json that train-lm wrote (a small JSON object with a "config")."""
    path = os.path.join(out, REPORT_FILE)
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > 1_000_000:
            return False
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and isinstance(report.get("config"), dict)


def read_training_report(model_dir: str) -> tuple[dict | None, bool]:
    """(training.json of a model directory as a dict, or None; whether a file is there but unusable: too large,
    not strict JSON, not an object). Never raises for what the file holds; reads at most REPORT_MAX_BYTES + 1."""
    file = os.path.join(model_dir, REPORT_FILE)
    if not os.path.isfile(file):
        return None, False
    try:
        data = read_regular(file, REPORT_MAX_BYTES, REPORT_FILE, "")
        saved = None if len(data) > REPORT_MAX_BYTES else loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, True
    return (saved, False) if isinstance(saved, dict) else (None, True)
