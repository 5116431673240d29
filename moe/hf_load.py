"""Load a local Hugging Face MoE causal LM (never downloads), refusing what we cannot or should not load.

Order of checks: the directory, config.json, the family, the memory estimate, then the weights.
"""
from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

from .config import MoEConfig
from .hf import adapter_for, instrument
from .memory import budget_bytes, describe_bytes, estimate_bytes

BUNDLED_MODEL = str(pathlib.Path(__file__).resolve().parents[1] / "models" / "pydoc-mixtral")
MODEL_ENV = "MOE_SCOPE_MODEL"


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


def read_config(path: str) -> dict:
    """config.json of a model directory as a dict (ValueError when missing or unreadable)."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise ValueError(f"model directory {path!r} does not exist; give a local directory with config.json "
                         f"and model.safetensors")
    file = root / "config.json"
    if not file.is_file():
        raise ValueError(f"{path!r} has no config.json: not a Hugging Face model directory")
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); re-save the model") from None


def estimate_model_bytes(path: str, config: dict, tokens: int) -> dict[str, int]:
    """Weights (the safetensors files) + one instrumented forward of `tokens` tokens, all layers' traces kept."""
    adapter = adapter_for(config.get("model_type", ""))
    weights = sum(f.stat().st_size for f in pathlib.Path(path).glob("*.safetensors"))
    missing = [key for key in ("hidden_size", "num_hidden_layers", "vocab_size", *adapter.sizes) if key not in config]
    if missing:
        raise ValueError(f"config.json says model_type {adapter.family!r} but lacks {', '.join(missing)}: "
                         f"it does not describe a {adapter.family} model; re-save the model's config")
    E, H, K = (int(config[key]) for key in adapter.sizes)
    D, L = int(config["hidden_size"]), int(config["num_hidden_layers"])
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K)
    layer = estimate_bytes(cfg, tokens)
    item = 2 if config.get("dtype", config.get("torch_dtype")) in ("bfloat16", "float16") else 4
    heads = int(config.get("num_attention_heads", 1))
    other = tokens * int(config["vocab_size"]) * 4 * 2 + heads * tokens * tokens * item + 8 * tokens * D * item
    forward = layer["activations"] + L * layer["trace"] + other
    return {"weights": weights, "forward": forward, "total": weights + forward}


def check_model_budget(path: str, config: dict, tokens: int, budget: int | None = None) -> None:
    budget = budget_bytes() if budget is None else budget
    est = estimate_model_bytes(path, config, tokens)
    if est["total"] > budget:
        raise ValueError(f"loading {pathlib.Path(path).name} and running {tokens} tokens needs about "
                         f"{describe_bytes(est['total'])} (weights {describe_bytes(est['weights'])}), over the "
                         f"memory budget of {describe_bytes(budget)}: lower --max-tokens, pick a smaller model, "
                         f"or raise MOE_SCOPE_MEMORY_GB")


def load_model(path: str | None = None, tokens: int = 1024, budget: int | None = None) -> LoadedModel:
    """Load, check and instrument a local MoE causal LM; every refusal is a ValueError with the fix."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or default_model_dir()
    config = read_config(path)
    family = config.get("model_type", "")
    adapter_for(family)  # refuses unsupported families before touching the weights
    check_model_budget(path, config, tokens, budget)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto")
    except Exception as err:  # safetensors / transformers raise many types for a damaged checkpoint
        raise ValueError(f"could not load the weights in {path!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); the file may be truncated: "
                         f"re-save or re-train the model") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise ValueError(f"could not load the tokenizer in {path!r} ({type(err).__name__}); "
                         f"save tokenizer.json with the model") from None
    model.eval()
    with torch.no_grad():
        layers = instrument(model)
    return LoadedModel(name=pathlib.Path(path).name, path=str(path), family=family, model=model,
                       tokenizer=tokenizer, layers=layers)
