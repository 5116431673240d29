"""Load a local Hugging Face MoE causal LM (never downloads), refusing what we cannot or should not load.

Order of checks: the directory, config.json, the family, the memory estimate, then the weights.
"""
from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass, field

from moe.config import MoEConfig
from moe.hf.checkpoint import check_sizes, plan_checkpoint, read_config
from moe.hf.instrument import adapter_for, instrument
from moe.hf.lm_config import REPORT_FILE, read_training_report
from moe.hf.windows import model_context
from moe.memory import BUDGET_ENV, budget_bytes, describe_bytes, describe_over, estimate_bytes, out_of_memory
from moe.roots import MODELS_DIR

# The models that ship with moe-scope (trained by train-lm; each directory has its card, README.md).
BUNDLED_MODELS = {name: str(MODELS_DIR / name) for name in ("pydoc-mixtral", "pydoc-deepseek")}
BUNDLED_MODEL = BUNDLED_MODELS["pydoc-mixtral"]  # the default: Mixtral, softmax router + aux loss
MODEL_ENV = "MOE_SCOPE_MODEL"


def bundled_name(path: str) -> str | None:
    """The bundled model's name when `path` is its directory, else None."""
    try:
        real = pathlib.Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return next((name for name, p in BUNDLED_MODELS.items() if pathlib.Path(p).resolve() == real), None)


def default_model_dir() -> str:
    """$MOE_SCOPE_MODEL if set, else the bundled model."""
    return os.environ.get(MODEL_ENV) or BUNDLED_MODEL


@dataclass
class LoadedModel:
    name: str           # the directory's name
    path: str
    family: str         # config.model_type
    model: object       # the instrumented transformers model (eval mode)
    tokenizer: object
    layers: list[int]   # decoder-layer indices of the MoE layers
    estimate: dict = field(default_factory=dict)  # estimate_model_bytes at load time (bytes by part)
    context: int = 0    # the most positions one forward may hold (moe.hf.windows.model_context)

    @property
    def resident_bytes(self) -> int:
        """What the loaded model keeps while it is held: its weights and tokenizer."""
        return self.estimate.get("weights", 0) + self.estimate.get("tokenizer", 0)


def estimate_model_bytes(path: str, config: dict, tokens: int) -> dict[str, int]:
    """Bytes of loading the directory and one instrumented forward of `tokens` tokens, all layers' traces kept.

    weights: the parameters and buffers of the model config.json describes, at its dtype (built on the meta
    device: what transformers allocates, whatever the files hold); loading: the safetensors files, mapped while
    their tensors are copied (peak RSS of a load is weights + files, benchmarks/bench_memory_guard.py);
    tokenizer: TOKENIZER_FACTOR x its files; forward: activations, traces, logits and attention, and the
    runtime overhead of a first forward (moe.memory.RUNTIME_BYTES). Refuses a checkpoint whose tensors are not
    the config's model."""
    adapter = adapter_for(_family(config))
    config = _with_aliases(config, adapter.family)
    check_sizes(config, adapter.family, adapter.sizes)
    plan = plan_checkpoint(path)
    E, H, K = (config[key] for key in adapter.sizes)
    D, L = config["hidden_size"], config["num_hidden_layers"]
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=min(K, E))
    layer = estimate_bytes(cfg, tokens)
    item = 2 if config.get("dtype", config.get("torch_dtype")) in ("bfloat16", "float16") else 4
    heads = config.get("num_attention_heads", 1)
    other = tokens * config["vocab_size"] * 4 * 2 + heads * tokens * tokens * item + 8 * tokens * D * item
    parts = {"weights": plan.model_bytes, "loading": plan.file_bytes, "tokenizer": plan.tokenizer_bytes,
             "forward": layer["activations"] + L * layer["trace"] + other + layer["runtime"]}
    return {**parts, "total": sum(parts.values())}


def _with_aliases(config: dict, family: str) -> dict:
    """config.json with each size also under the other name transformers' config class gives it (transformers
    5 saves Qwen3-MoE's num_experts as num_local_experts)."""
    from transformers import CONFIG_MAPPING

    config = dict(config)
    for alias, name in getattr(CONFIG_MAPPING[family], "attribute_map", {}).items():
        if alias in config and name not in config:
            config[name] = config[alias]
        elif name in config and alias not in config:
            config[alias] = config[name]
    return config


def check_model_budget(path: str, config: dict, tokens: int, budget: int | None = None, held: int = 0) -> dict:
    """The estimate (estimate_model_bytes), or a ValueError when it and `held` bytes (models already kept in
    memory) exceed the budget."""
    budget = budget_bytes() if budget is None else budget
    est = estimate_model_bytes(path, config, tokens)
    if est["total"] + held > budget:
        need, limit, total, held_text = describe_over(est["total"] + held, budget, est["total"], held)
        kept = f"; with {held_text} held by models already loaded, {need}," if held else ","
        raise ValueError(f"loading {pathlib.Path(path).name} and running {tokens} tokens needs about "
                         f"{total} (weights {describe_bytes(est['weights'])}, tokenizer "
                         f"{describe_bytes(est['tokenizer'])}){kept} over the memory budget of "
                         f"{limit}: lower --max-tokens, pick a smaller model, or raise {BUDGET_ENV}")
    return est


def _family(config: dict) -> str:
    """config.json's model_type, refused unless it is a supported sparse MoE family."""
    family = config.get("model_type", "")
    if not isinstance(family, str):
        raise ValueError(f"config.json's model_type is {type(family).__name__}, not a family name; re-save the "
                         f"model's config")
    adapter_for(family)  # refuses unsupported families before touching the weights
    return family


def model_estimate(path: str, tokens: int) -> dict[str, int]:
    """estimate_model_bytes for a directory, after its config and family are checked (nothing is loaded)."""
    config = read_config(path)
    _family(config)
    return estimate_model_bytes(path, config, tokens)


def load_model(path: str | None = None, tokens: int = 1024, budget: int | None = None, held: int = 0,
               estimate: dict | None = None) -> LoadedModel:
    """Load, check and instrument a local MoE causal LM; every refusal is a ValueError with the fix.

    `held`: bytes already held by other loaded models, counted in the same budget; `estimate`: this
    directory's model_estimate when the caller has it."""
    import torch

    from_env = not path and bool(os.environ.get(MODEL_ENV))
    path = path or default_model_dir()
    try:
        config = read_config(path)
    except ValueError as err:
        if from_env:  # the user typed no path: say where it came from
            raise ValueError(f"{err} (the model named by ${MODEL_ENV}; unset it for the bundled model)") from None
        raise
    family = _family(config)
    budget = budget_bytes() if budget is None else budget
    if estimate is None:
        estimate = check_model_budget(path, config, tokens, budget, held)
    elif estimate["total"] + held > budget:
        check_model_budget(path, config, tokens, budget, held)  # raises with the figures
    model, tokenizer = _materialise(path)
    model.eval()
    with torch.no_grad():
        layers = instrument(model)
    return LoadedModel(name=pathlib.Path(path).name, path=str(path), family=family, model=model,
                       tokenizer=tokenizer, layers=layers, estimate=estimate,
                       context=model_context(model.config, str(path)))


def _materialise(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = pathlib.Path(path).name
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto", use_safetensors=True)
    except MemoryError:
        raise ValueError(out_of_memory(f"loading the weights of {name!r}")) from None
    except Exception as err:  # safetensors / transformers raise many types for a damaged checkpoint
        raise ValueError(f"could not load the weights in {path!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); the file may be truncated: "
                         f"re-save or re-train the model") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except MemoryError:
        raise ValueError(out_of_memory(f"loading the tokenizer of {name!r}")) from None
    except Exception as err:
        raise ValueError(f"could not load the tokenizer in {path!r} ({type(err).__name__}); "
                         f"save tokenizer.json with the model") from None
    return model, tokenizer


def read_training_nmi(path: str, layers: int) -> tuple[dict[str, list] | None, str | None]:
    """(the held-out and initial NMI per MoE layer that training.json saved, or None; a note when the file
    is there but unusable). Never raises for what the file holds."""
    saved, bad = read_training_report(path)
    unusable = (f"{REPORT_FILE} in this model directory is not a training report this version reads; its NMI is "
                f"not shown")
    if saved is None:
        return None, unusable if bad else None
    series = {key: saved.get(key) for key in ("nmi_trained", "nmi_init")}
    if series["nmi_trained"] is None:
        return None, None  # a report without the NMI (older training runs)
    if not all(isinstance(v, list) and all(_number(x) for x in v) for v in series.values()):
        return None, unusable
    if any(len(v) != layers for v in series.values()):
        return None, None  # saved for another layer count: not this model's
    return series, None


def _number(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x))

