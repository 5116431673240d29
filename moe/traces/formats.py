"""Every routing source moe-scope opens, detected from the content (never from the file name alone), and read into
one `RoutingLog`.

A path is a file or a directory of rank files read together. Detection looks at the first bytes (Parquet, zip —
a torch.save `.pt` or a NumPy `.npz` —, `.npy`, JSON lines, CSV) and then at the loaded object's keys and shapes;
file names only pick the rank files of a directory (`router_trace_rank{R}.jsonl`, `mcore_ep_loads_rank*.npz`,
SGLang's `expert_distribution_recorder_*.pt`).
"""
from __future__ import annotations

import os
import re

from moe.memory import BUDGET_ENV, describe_bytes
from moe.roots import lies_in
from moe.traces import safeload
from moe.traces.log import RoutingLog, resolve_experts
from moe.traces.records import Progress, TraceLimits
from moe.traces.store import is_log_dir
from moe.traces.store_read import read_store
from moe.traces.tensors import OverBudget, tensor_bytes

# Every format: what the page and the README call it (one source of truth for the names).
FORMATS = {
    "moe-scope-log": "moe-scope routing log (a directory: meta.json, counts/, tokens/)",
    "moe-scope-parquet": "moe-scope trace Parquet, one row per (token, expert) (the page's download, TraceWriter)",
    "megatron": "Megatron-LM router_trace_rank{R}.jsonl (--moe-routing-trace-path), one rank or a directory",
    "mcore-ep-loads": "Megatron-Core EP load dump mcore_ep_loads_rank{g}_{id}.npz (MCORE_MOE_EXPERT_LOAD_DUMP)",
    "sglang-stat": "SGLang ExpertDistributionRecorder dump, mode stat (logical_count)",
    "sglang-per-pass": "SGLang ExpertDistributionRecorder dumps, mode per_pass (one file per rank)",
    "sglang-per-token": "SGLang ExpertDistributionRecorder dumps, mode per_token (one file per rank)",
    "vllm-routed-experts": "vLLM routed experts [tokens, moe_layers, top_k] (--enable-return-routed-experts), "
                           ".npy or .pt",
    "vllm-eplb-window": "vLLM EPLB load window (expert_load_window, physical_to_logical_map), .pt",
    "counts-csv": "plain counts: CSV with columns layer, expert, count (+ step)",
    "counts-parquet": "plain counts: Parquet with columns layer, expert, count (+ step)",
}
RANK_FILES = [("megatron", re.compile(r"router_trace_rank(\d+)\.jsonl")),
              ("mcore-ep-loads", re.compile(r"mcore_ep_loads_rank(\d+)_.+\.npz")),
              ("sglang", re.compile(r"expert_distribution_recorder_.+?(?:_(\d+))?\.pt"))]
MAX_RANK_FILES = 4096
UNKNOWN = ("is none of the routing formats moe-scope reads: " + "; ".join(FORMATS.values()))


def detect(path: str) -> str:
    """The format of a file or directory (a key of FORMATS, or "sglang"/"torch" for a .pt decided when loaded)."""
    if os.path.isdir(path):
        if is_log_dir(path):
            return "moe-scope-log"
        return _rank_files(path)[0]
    with safeload.open_regular(path) as f:
        head = f.read(4096)
    if not head:
        raise ValueError(f"{path!r} is empty (0 bytes): it holds no routing; copy the file again, or give the one its "
                         f"run wrote")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(safeload.NPY_MAGIC):
        return "vllm-routed-experts"
    if head.startswith(safeload.ZIP_MAGIC):
        return "npz" if _is_npz(path) else "torch"
    if head.lstrip()[:1] == b"{":
        return "megatron"
    from moe.traces.counts import looks_like_counts_csv
    if looks_like_counts_csv(head):
        return "counts-csv"
    raise ValueError(f"{path!r} {UNKNOWN}")


def _is_npz(path: str) -> bool:
    from moe.traces.zipfiles import DAMAGED, open_zip
    with safeload.open_regular(path) as f:
        try:
            names = open_zip(f, path).namelist()
        except DAMAGED:
            raise ValueError(f"{path!r} is a damaged zip archive (a truncated .pt or .npz); copy it again") from None
    return bool(names) and all(n.endswith(".npy") for n in names)


def _rank_files(path: str) -> tuple[str, list[str]]:
    """(kind, files sorted by rank) of a directory of one producer's rank files."""
    names = sorted(os.listdir(path))
    for kind, pattern in RANK_FILES:
        found = [(m, n) for n in names if (m := pattern.fullmatch(n))]
        if len(found) > MAX_RANK_FILES:
            raise ValueError(f"directory {path!r} holds {len(found):,} rank files; at most {MAX_RANK_FILES:,} are read "
                             f"together")
        if found:
            found.sort(key=lambda mn: (int(mn[0].group(1) or 0), mn[1]))
            files = [os.path.join(path, n) for _, n in found]
            inside(path, files)
            first = {}  # (device, inode) -> the name seen first: links (symbolic or hard) to one file, each read
            for f in files:  # as a rank, took minutes per name (hours at MAX_RANK_FILES)
                st = os.stat(f)
                seen = first.setdefault((st.st_dev, st.st_ino), f)
                if seen != f:
                    raise ValueError(f"{os.path.basename(f)!r} in {path!r} is {os.path.basename(seen)!r} under another "
                                     f"name (a link); give each rank's file once")
            return kind, files
    raise ValueError(f"directory {path!r} holds no routing files: give a routing log directory (meta.json) or a "
                     f"directory of router_trace_rank{{R}}.jsonl, mcore_ep_loads_rank*.npz or SGLang "
                     f"expert_distribution_recorder_*.pt files")


def inside(folder: str, files: list[str]) -> None:
    """Every file of a directory read together must lie in it (symlinks followed): a link out of it could name a file
    outside the directories the server may open."""
    home = os.path.realpath(folder)
    for f in files:
        if not lies_in(f, home):
            raise ValueError(f"{os.path.basename(f)!r} in {folder!r} links outside that directory; copy the file "
                             f"itself there")


def read_log(path: str, n_experts: int | None = None, progress: Progress | None = None,
             limits: TraceLimits | None = None) -> RoutingLog:
    """Any supported source as a RoutingLog; every problem is one ValueError line."""
    limits = limits or TraceLimits.from_env()
    kind = detect(path)
    files = _rank_files(path)[1] if os.path.isdir(path) and kind != "moe-scope-log" else [path]
    if kind == "moe-scope-log":
        log = read_store(path, limits)
        resolve_experts(n_experts, log.n_experts, -1, "the routing log")  # a count given must agree with its own
        return log
    if kind == "megatron":
        from moe.traces.megatron import read_megatron
        return read_megatron(files, n_experts, progress=progress, limits=limits)
    if kind in ("mcore-ep-loads", "npz"):
        from moe.traces.mcore import read_npz
        return read_npz(files, n_experts, limits)
    if kind == "counts-csv":
        from moe.traces.counts import read_counts
        return read_counts(path, n_experts, limits)
    if kind == "parquet":
        return _parquet(path, n_experts, progress, limits)
    if kind == "vllm-routed-experts":
        from moe.traces.vllm import from_routed
        return from_routed(safeload.load_npy(path, limits), path, n_experts, limits)
    return _torch(files, n_experts, limits)


def _parquet(path: str, n_experts: int | None, progress: Progress | None, limits: TraceLimits) -> RoutingLog:
    """Plain counts (layer, expert, count columns) or a moe-scope per-(token, expert) trace (summarised)."""
    with safeload.open_regular(path) as f:
        names = safeload.parquet_file(f, repr(path), limits).schema_arrow.names
    from moe.traces.counts import is_counts_parquet
    if is_counts_parquet(names):
        from moe.traces.counts import read_counts
        return read_counts(path, n_experts, limits)
    from moe.traces.summary import summarize
    return summarize(path, n_experts=n_experts, progress=progress, limits=limits).log()


def _torch(files: list[str], n_experts: int | None, limits: TraceLimits) -> RoutingLog:
    """torch.save files: SGLang dumps (one or a directory of ranks) or vLLM arrays, told apart by their content."""
    from moe.traces import sglang, vllm
    total = sum(os.path.getsize(f) for f in files)  # torch.save stores tensors uncompressed: about what they decode to
    if total > limits.budget // 4:
        raise ValueError(f"the {len(files)} files take {total:,} bytes together, over a quarter of the memory budget; "
                         f"give fewer rank files or raise {BUDGET_ENV}")
    loaded, cap, spent = [], limits.budget // 4, 0
    for f in files:  # the files stay loaded together: each within what the ones before it left of one cap
        try:
            loaded.append((f, safeload.load_pt(f, limits, cap - spent)))
        except OverBudget as err:
            if not loaded:
                raise
            before = f"the {len(loaded)} rank files before it hold" if len(loaded) > 1 else "the file before it holds"
            raise ValueError(f"{err} ({before} {describe_bytes(spent)} of the {describe_bytes(cap)} the files of a "
                             f"directory share)") from None
        spent += tensor_bytes(loaded[-1][1])
    kinds = {sglang.kind(obj) or vllm.kind(obj) for _, obj in loaded}
    if None in kinds:
        bad = next(f for f, obj in loaded if (sglang.kind(obj) or vllm.kind(obj)) is None)
        raise ValueError(f"{bad!r} is a torch.save file but not a routing dump moe-scope reads (SGLang "
                         f"ExpertDistributionRecorder, vLLM routed experts or EPLB window)")
    if len(kinds) > 1:
        raise ValueError(f"the files mix routing formats ({', '.join(sorted(kinds))}); give the files of one run")
    kind = kinds.pop()
    if kind.startswith("sglang"):
        return sglang.from_dumps(loaded, n_experts, limits)
    if len(loaded) > 1:
        raise ValueError("give one vLLM file at a time")
    path, obj = loaded[0]
    if kind == "vllm-routed-experts":
        return vllm.from_routed(obj, path, n_experts, limits)
    return vllm.from_eplb(obj, path, n_experts, limits)
