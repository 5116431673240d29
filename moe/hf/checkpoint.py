"""What a local model directory holds and would cost, read without loading it.

`plan_checkpoint` reads config.json (strict JSON, sizes that are positive whole numbers), builds the model on
the meta device (no memory), reads the safetensors headers and compares their tensors with the model's state
dict through transformers' own checkpoint renamings (legacy layouts load as they would), so a directory whose
config describes more than its weights hold is refused before anything is allocated: transformers would fill
the missing tensors at the config's size.
"""
from __future__ import annotations

import json
import math
import pathlib
import struct
from dataclasses import dataclass

from moe.jsonio import loads_strict

CONFIG_MAX_BYTES = 1 << 20        # a model's config.json is a few KiB
HEADER_MAX_BYTES = 16 << 20       # a safetensors header names every tensor: ~100 bytes each
MAX_LAYERS = 1024                 # the meta build is a Python loop over layers; the largest models have ~130
# Resident bytes of a loaded tokenizer per byte of its files: measured 17-20 for word-level vocabularies and
# added tokens, 31.8 for a 32 MiB BPE with 900k merges (benchmarks/bench_memory_guard.py); kept with a margin.
TOKENIZER_FACTOR = 40
TOKENIZER_GLOBS = ("tokenizer*", "vocab*", "merges*", "added_tokens*", "special_tokens_map*", "*.model",
                   "chat_template*")
# Whole-number sizes a config may carry; each must be a positive integer when present (not a float or a string).
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
             "head_dim", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
             "max_position_embeddings", "num_experts", "num_local_experts", "n_routed_experts",
             "moe_num_experts", "num_experts_per_tok", "moe_k")


@dataclass
class Checkpoint:
    """What loading the directory would allocate, and the tensors it holds."""
    model_bytes: int       # parameters and buffers at the config's dtype (the meta model)
    file_bytes: int        # the safetensors files (mapped while loading)
    tokenizer_bytes: int   # TOKENIZER_FACTOR x the tokenizer files


def read_config(path: str) -> dict:
    """config.json of a model directory as a dict (ValueError when missing, unreadable or not a JSON object)."""
    root = pathlib.Path(path)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise ValueError(f"model directory {path!r} {what}; give a local directory with config.json and "
                         f"model.safetensors")
    file = root / "config.json"
    if not file.is_file():
        raise ValueError(f"{path!r} has no config.json: not a Hugging Face model directory")
    if file.stat().st_size > CONFIG_MAX_BYTES:
        raise ValueError(f"{file} is {file.stat().st_size:,} bytes; a model's config.json is a few KiB: re-save it")
    try:
        config = loads_strict(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); re-save the model") from None
    except ValueError as err:  # NaN / Infinity / -Infinity
        raise ValueError(f"{file} holds {err}, which is not a number JSON allows; re-save the model") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds a JSON {type(config).__name__}, not an object of settings; re-save the model")
    return config


def check_sizes(config: dict, family: str, sizes: tuple[str, ...]) -> None:
    """Every size is a positive whole number, the required ones are present and the layer count is bounded."""
    missing = [key for key in ("hidden_size", "num_hidden_layers", "vocab_size", *sizes) if key not in config]
    if missing:
        raise ValueError(f"config.json says model_type {family!r} but lacks {', '.join(missing)}: "
                         f"it does not describe a {family} model; re-save the model's config")
    required = ("hidden_size", "num_hidden_layers", "vocab_size", *sizes)
    for key in [k for k in config if k in SIZE_KEYS or k in sizes]:  # in the file's order: its own names first
        value = config[key]
        if value is None and key not in required:
            continue
        if type(value) is not int or value < 1:
            shown = json.dumps(value)[:40]
            raise ValueError(f"config.json's {key} is {shown}, not a positive whole number; re-save the model's "
                             f"config")
    if config["num_hidden_layers"] > MAX_LAYERS:
        raise ValueError(f"config.json's num_hidden_layers is {config['num_hidden_layers']:,}; at most "
                         f"{MAX_LAYERS:,} are loaded (the largest models have about 130)")


def meta_model(path: str):
    """The model config.json describes, built on the meta device: shapes and dtypes, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except MemoryError:
        raise
    except Exception as err:  # transformers raises many types for a config it cannot build
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise ValueError(f"config.json does not describe a model transformers can build ({type(err).__name__}: "
                         f"{first}); re-save the model's config") from None
    return model, getattr(cfg, "dtype", None) or torch.float32


def _header_size(file: pathlib.Path) -> int:
    with file.open("rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"the weights file {file.name!r} is empty or truncated: re-save the model")
    (size,) = struct.unpack("<Q", head)
    if size > HEADER_MAX_BYTES:
        raise ValueError(f"the weights file {file.name!r} declares a {size:,}-byte header: not a checkpoint "
                         f"(truncated or damaged); re-save the model")
    return size


def checkpoint_tensors(path: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """{tensor name: shape} over every *.safetensors file of the directory, and the files' total bytes."""
    from safetensors import safe_open

    files = sorted(pathlib.Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{pathlib.Path(path).name!r} has no .safetensors weights; only safetensors checkpoints "
                         f"are loaded: save the model with save_pretrained")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        _header_size(file)
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"could not read the weights file {file.name!r} ({type(err).__name__}); it may be "
                             f"truncated: re-save or re-train the model") from None
    return shapes, sum(f.stat().st_size for f in files)


def _renamer(model):
    """checkpoint key -> the model's key, as transformers renames it while loading (legacy layouts)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
        mapping = get_model_conversion_mapping(model)
    except Exception:  # another transformers version: names are compared as saved
        return lambda key, meta: key
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]

    def rename(key: str, meta: dict) -> str:
        renamed, _ = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        return key if renamed not in meta and key in meta else renamed
    return rename


def _names(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k[:80]) for k in keys[:2])
    return f"{len(keys)} tensor{'s' if len(keys) != 1 else ''} ({shown}{', …' if len(keys) > 2 else ''})"


def check_weights(model, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """The checkpoint's tensors are exactly the model's (tied copies aside), holding as many values."""
    meta = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    rename = _renamer(model)
    held: dict[str, int] = {}
    for key, shape in shapes.items():
        target = rename(key, meta)
        held[target] = held.get(target, 0) + math.prod(shape)
    expected = {key: tensor.numel() for key, tensor in meta.items() if key not in tied}
    missing, unexpected = set(expected) - set(held), set(held) - set(meta)
    if missing:
        raise ValueError(f"the weights in {name!r} lack {_names(missing)} that config.json describes; "
                         f"transformers would fill them with random values at the config's size: re-save the model")
    if unexpected:
        raise ValueError(f"the weights in {name!r} hold {_names(unexpected)} that config.json does not describe; "
                         f"the config does not match the weights: re-save the model")
    have, want = sum(v for k, v in held.items() if k in expected), sum(expected.values())
    if have != want:
        raise ValueError(f"the weights in {name!r} hold {have:,} values but config.json describes {want:,}: "
                         f"the config does not match the weights; re-save the model")


def tokenizer_bytes(path: str) -> int:
    """An upper bound of what loading the tokenizer holds: TOKENIZER_FACTOR x its files' bytes."""
    root = pathlib.Path(path)
    files = {f for pattern in TOKENIZER_GLOBS for f in root.glob(pattern) if f.is_file()}
    return TOKENIZER_FACTOR * sum(f.stat().st_size for f in files)


def plan_checkpoint(path: str) -> Checkpoint:
    """The directory's costs after checking that its weights are the model its config describes."""
    import torch

    model, dtype = meta_model(path)
    shapes, file_bytes = checkpoint_tensors(path)
    check_weights(model, shapes, pathlib.Path(path).name)
    item = dtype.itemsize if isinstance(dtype, torch.dtype) else 4
    tensors = [*model.parameters(), *model.buffers()]
    model_bytes = sum(t.numel() * (item if t.is_floating_point() else t.element_size()) for t in tensors)
    return Checkpoint(model_bytes=model_bytes, file_bytes=file_bytes, tokenizer_bytes=tokenizer_bytes(path))
