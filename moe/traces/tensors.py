"""What a loaded `torch.save` object may hold before a reader touches it (moe.traces.safeload.load_pt).

The file's size says nothing of what its tensors claim: `torch.ones(1).expand(64, 16384, 10**4)` is stored as one
element, and a reader that copies it (`astype`, `reshape`, `.numpy().tobytes()`) builds all 10**10. Nor does one
stored tensor bound what many references to it cost: 30 records naming one (1, 4M, 1) tensor took the SGLang reader
to 2.8 GB. So every tensor reference counts its whole shape (numel × element size) against the cap, and only plain
(strided, CPU, not nested) tensors of bool, integer or float values are let through: bits, quantized, sparse, meta
and nested tensors cannot become NumPy arrays, and reached the readers as tracebacks or unhelpful errors.
"""
from __future__ import annotations

MAX_OBJECTS = 1 << 20  # keys, values and items walked in one loaded object at most (each reference counts)


def check_tensors(obj, path: str, cap: int):
    """obj, once every tensor in it (through dicts, lists and tuples) is a plain bool, integer or float tensor and all
    of them together, each reference counting its whole shape, take at most `cap` bytes; else ValueError (one line)."""
    import torch

    from moe.memory import BUDGET_ENV, describe_over
    plain = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
             torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64}
    total, stack, walked = 0, [obj], 1
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.layout != torch.strided or item.dtype not in plain or item.is_nested or item.device.type != "cpu":
                kind = "nested" if item.is_nested else item.device.type if item.device.type != "cpu" else str(
                    item.layout).removeprefix("torch.")
                raise ValueError(f"{path!r} holds a {kind} tensor of {str(item.dtype).removeprefix('torch.')}; a "
                                 f"routing dump holds plain integer or float tensors")
            total += item.numel() * item.element_size()
            if total > cap:
                total_text, cap_text = describe_over(total, cap)
                raise ValueError(f"{path!r} holds tensors of {total_text} or more (each counted whole, as "
                                 f"readers copy it), over the {cap_text} a routing file may take under "
                                 f"the memory budget; give a shorter dump or raise {BUDGET_ENV}")
        elif isinstance(item, (dict, list, tuple)):
            walked += len(item) * (2 if isinstance(item, dict) else 1)  # counted before they are stacked: a list
            if walked > MAX_OBJECTS:                                     # holding itself 1,000 times grew the stack
                raise ValueError(f"{path!r} holds more than {MAX_OBJECTS:,} objects (or refers to itself); a "
                                 f"routing dump holds a few dicts of tensors")
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
    return obj
