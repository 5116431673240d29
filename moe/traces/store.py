"""The routing log on disk: a directory of Parquet datasets that pandas, pyarrow.dataset, DuckDB or Spark read as is.

    DIR/meta.json               schema, source, layers (in order), n_experts, top_k, metadata, physical → logical map
    DIR/counts/part-*.parquet   one row per (step, layer, expert): step int64, layer string, expert int32, count int64
    DIR/tokens/part-*.parquet   one row per (step, layer, token): step, layer, token int64, experts list<int32>
                                (-1 = empty slot), weights list<float32> (when recorded)
    DIR/ranks/part-*.parquet    one row per (step, rank, layer, physical slot): step, rank int32, layer, physical
                                int32, count int64 (when the source records per-rank physical counts)

The schema is documented in docs/routing-log.md. A writer (`LogWriter`, `write_log`) only ever adds whole part
files, each written under a temporary name and renamed into place, so a reader never sees half a file: a log still
being written is read by its finished parts, and `LogFollower` reads only the parts it has not seen.
"""
from __future__ import annotations

import os
import re
import uuid

import numpy as np

from moe.jsonio import dumps, loads_strict
from moe.memory import describe_bytes
from moe.roots import lies_in, open_inside, read_regular
from moe.traces.log import RECORDED, RoutingLog, check_map
from moe.traces.records import LAYER_NAME, MAX_EXPERTS, MAX_LAYERS, MAX_NAME, TraceLimits

SCHEMA = "moe-scope-routing-log/1"
META = "meta.json"
META_BYTES = 64 << 20     # meta.json holds layer names and at most one (L, P) map; at most a JSON line's share of
                          # the budget too (TraceLimits.line_bytes: json.loads builds up to 32 bytes a byte)
PART = re.compile(r"part-[0-9a-z-]{1,80}\.parquet")
TABLES = ("counts", "tokens", "ranks")


def is_log_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META))


# --- writing ------------------------------------------------------------------------------------------------------

class LogWriter:
    """Appends steps to a routing log directory; `flush()` writes the buffered steps as one part file per table.

        with LogWriter(out, layers=["0", "1"], n_experts=8, top_k=2) as w:
            w.write_step(step, counts)          # counts (L, E) int
    """

    def __init__(self, path: str, layers: list[str], n_experts: int, source: str = "moe-scope-recorder",
                 top_k: int | None = None, meta: dict | None = None, physical_to_logical=None,
                 n_experts_source: str = RECORDED) -> None:
        self.path, self.layers, self.n_experts = path, [str(x) for x in layers], int(n_experts)
        top_k = int(top_k) if isinstance(top_k, np.integer) else top_k  # a config's numpy int; True, 2.7 refused
        self.last_step: int | None = None
        self._counts: list[tuple[int, np.ndarray]] = []
        self._tokens: list[dict] = []
        self._ranks: list[tuple[int, np.ndarray]] = []
        if not 1 <= len(self.layers) <= MAX_LAYERS:  # what every reader takes (RoutingLog)
            raise ValueError(f"a routing log holds 1 to {MAX_LAYERS:,} layers, got {len(self.layers):,}")
        problem = meta_problem(self.layers, self.n_experts, top_k)  # what read_meta refuses, refused before writing
        if problem:
            raise ValueError(f"cannot write a routing log whose {problem}")
        if physical_to_logical is not None:
            physical_to_logical = check_map(physical_to_logical, self.n_experts, "cannot write a routing log: the "
                                            "physical → logical map", len(self.layers))
        check_new_log_dir(path)
        try:
            os.makedirs(path, exist_ok=True)  # its missing parents too (RoutingRecorder(model, "runs/b"))
        except OSError as err:  # e.g. under /proc, which says it is writable to root
            raise ValueError(f"cannot create the routing log directory {path!r} ({err.strerror}); give a new "
                             f"directory in a folder you can write to") from None
        doc = {"schema": SCHEMA, "source": source, "layers": self.layers, "n_experts": self.n_experts,
               "n_experts_source": n_experts_source, "top_k": top_k, "meta": meta or {},
               "physical_to_logical_map": None if physical_to_logical is None
               else np.asarray(physical_to_logical).tolist()}
        _atomic_write(os.path.join(path, META), dumps(doc, indent=1).encode())

    def write_step(self, step: int, counts, tokens: dict | None = None, rank_counts=None) -> None:
        """counts (L, E); tokens {"layer": (N,) index, "ids": (N, K), "weights": (N, K) | None} of this step;
        rank_counts (W, L, P). Steps must increase."""
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"step {step} comes after step {self.last_step}; steps must increase")
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (len(self.layers), self.n_experts):
            raise ValueError(f"counts must be (layers={len(self.layers)}, experts={self.n_experts}), got "
                             f"{counts.shape}")
        self.last_step = step
        self._counts.append((step, counts))
        if tokens is not None:
            self._tokens.append({"step": step, **tokens})
        if rank_counts is not None:
            self._ranks.append((step, np.asarray(rank_counts, dtype=np.int64)))

    def flush(self) -> None:
        if not self._counts:
            return
        name = f"part-{self._counts[0][0]:012d}-{uuid.uuid4().hex[:8]}.parquet"
        _write_table(self.path, "counts", name, _counts_table(self._counts, self.layers))
        if self._tokens:
            _write_table(self.path, "tokens", name, _tokens_table(self._tokens, self.layers))
        if self._ranks:
            _write_table(self.path, "ranks", name, _ranks_table(self._ranks, self.layers))
        self._counts, self._tokens, self._ranks = [], [], []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_new_log_dir(path: str) -> None:
    """ValueError (one line) unless `path` can become a routing log: an empty directory, or a new one (its missing
    parents made too) under an existing folder that is writable (trace-report checks it before it reads the source)."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{path!r} is a file, not a directory; give a new or empty directory for the routing log")
        if os.listdir(path):
            raise ValueError(f"{path!r} is not empty; give a new directory for the routing log")
        return
    above = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(above):  # the nearest existing folder above it takes the new ones
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ValueError(f"{path!r} lies under {above!r}, a file; give a new directory in a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ValueError(f"{path!r} lies under {above!r}, which is not writable; give a new directory in a folder "
                         f"you can write to")


def write_log(log: RoutingLog, path: str) -> None:
    """Write a whole RoutingLog (any source) as a routing log directory (`trace-report --out DIR`)."""
    writer = LogWriter(path, log.layers, log.n_experts, source=log.source, top_k=log.top_k, meta=log.meta,
                       physical_to_logical=log.physical_to_logical, n_experts_source=log.n_experts_source)
    tokens = log.tokens
    if tokens is not None:
        order = np.argsort(tokens.step, kind="stable")  # each step's tokens in source order
        sorted_steps = tokens.step[order]
    for i, step in enumerate(log.steps):
        here = None
        if tokens is not None:
            rows = order[np.searchsorted(sorted_steps, step, "left"):np.searchsorted(sorted_steps, step, "right")]
            here = {"layer": tokens.layer[rows], "ids": tokens.ids[rows],
                    "weights": None if tokens.weights is None else tokens.weights[rows]}
        ranks = None if log.rank_counts is None else log.rank_counts[i]
        writer.write_step(int(step), log.counts[i], here if here is None or len(here["layer"]) else None, ranks)
    writer.close()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_table(root: str, table: str, name: str, data) -> None:
    import pyarrow.parquet as pq
    folder = os.path.join(root, table)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp")  # a dot name: no reader (nor pyarrow.dataset) lists it
    pq.write_table(data, tmp)
    os.replace(tmp, os.path.join(folder, name))


def _counts_table(items: list[tuple[int, np.ndarray]], layers: list[str]):
    import pyarrow as pa
    S, (L, E) = len(items), items[0][1].shape
    return pa.table({"step": np.repeat([s for s, _ in items], L * E).astype(np.int64),
                     "layer": np.tile(np.repeat(np.asarray(layers, dtype=object), E), S),
                     "expert": np.tile(np.arange(E, dtype=np.int32), S * L),
                     "count": np.concatenate([c.ravel() for _, c in items]).astype(np.int64)})


def _tokens_table(items: list[dict], layers: list[str]):
    import pyarrow as pa
    names = np.asarray(layers, dtype=object)
    steps, layer, token, ids, weights = [], [], [], [], []
    for it in items:
        n = len(it["layer"])
        steps.append(np.full(n, it["step"], np.int64))
        layer.append(names[np.asarray(it["layer"], dtype=np.int64)])
        token.append(_token_numbers(np.asarray(it["layer"])))
        ids.append(np.asarray(it["ids"], dtype=np.int32))
        weights.append(it.get("weights"))
    K = ids[0].shape[1]
    flat = np.concatenate(ids)  # (N, K)
    cols = {"step": np.concatenate(steps), "layer": np.concatenate(layer), "token": np.concatenate(token),
            "experts": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), K)}
    if all(w is not None for w in weights):
        w = np.concatenate([np.asarray(x, dtype=np.float32) for x in weights])
        cols["weights"] = pa.FixedSizeListArray.from_arrays(pa.array(w.ravel()), K)
    return pa.table(cols)


def _token_numbers(layer: np.ndarray) -> np.ndarray:
    """Each token's position within its (step, layer): 0, 1, ... in the order given."""
    order = np.argsort(layer, kind="stable")
    out = np.empty(len(layer), np.int64)
    sorted_layer = layer[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_layer)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(layer)]))
    out[order] = np.arange(len(layer)) - first
    return out


def _ranks_table(items: list[tuple[int, np.ndarray]], layers: list[str]):
    import pyarrow as pa
    S, (W, L, P) = len(items), items[0][1].shape
    return pa.table({"step": np.repeat([s for s, _ in items], W * L * P).astype(np.int64),
                     "rank": np.tile(np.repeat(np.arange(W, dtype=np.int32), L * P), S),
                     "layer": np.tile(np.repeat(np.asarray(layers, dtype=object), P), S * W),
                     "physical": np.tile(np.arange(P, dtype=np.int32), S * W * L),
                     "count": np.concatenate([c.ravel() for _, c in items]).astype(np.int64)})


# --- reading ------------------------------------------------------------------------------------------------------

def read_meta(path: str) -> dict:
    """meta.json of a routing log directory, checked (one line per problem): a file, not a link out of the log, of
    at most META_BYTES and TraceLimits.line_bytes."""
    meta, cap = os.path.join(path, META), min(META_BYTES, TraceLimits.from_env().line_bytes)
    what, hint = "routing log metadata", "give a routing log directory"
    opened = open_inside(meta, os.path.realpath(path), what, hint, f"{path!r}: meta.json links outside the routing "
                                                                   f"log; copy the log itself")
    raw = read_regular(meta, cap, what, hint, opened)
    if len(raw) > cap:
        raise ValueError(f"{path!r}: meta.json takes more than {describe_bytes(cap)}, the most a routing log's "
                         f"metadata may take under the memory budget; give a routing log written by moe-scope")
    try:
        doc = loads_strict(raw.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"{path!r}: meta.json is not JSON; give a routing log written by moe-scope") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path!r}: meta.json is not a {SCHEMA} document; give a routing log written by moe-scope")
    problem = meta_problem(doc.get("layers"), doc.get("n_experts"), doc.get("top_k"))
    if problem:
        raise ValueError(f"{path!r}: meta.json's {problem}")
    E = doc["n_experts"]
    if doc.get("physical_to_logical_map") is not None:
        doc["physical_to_logical_map"] = check_map(_int_array(doc["physical_to_logical_map"], path), E,
                                                   f"{path!r}: meta.json's physical_to_logical_map",
                                                   len(doc["layers"]))
    return doc


def meta_problem(layers, n_experts, top_k) -> str | None:
    """What is wrong with a log's layers, n_experts and top_k (the words after "meta.json's"), or None: what every
    reader takes, and so what LogWriter writes."""
    if (not isinstance(layers, list) or not layers or not all(isinstance(x, str) and LAYER_NAME.fullmatch(x)
                                                              for x in layers) or len(set(layers)) != len(layers)):
        return (f"layers must be a list of distinct names of 1 to {MAX_NAME} characters, each a letter, digit, '_', "
                f"'.' or '-' (as every other source's labels)")
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or not 1 <= n_experts <= MAX_EXPERTS:
        return f"n_experts must be an expert count from 1 to {MAX_EXPERTS}"
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_experts):
        return "top_k must be null or an integer from 1 to n_experts"
    return None


def _int_array(value, path: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:
        arr = np.asarray([])
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: meta.json's physical_to_logical_map must be a list of lists of integers")
    return arr


def parts(path: str, table: str) -> list[str]:
    """The finished part files of one table, in name order (temporary files are never listed)."""
    folder = os.path.join(path, table)
    if not os.path.isdir(folder):
        return []
    home = os.path.realpath(folder)  # resolved once: the parts are named from it, and opened against it
    if os.path.dirname(home) != os.path.realpath(path):
        raise ValueError(f"{table}/ of the routing log links outside it; copy the log itself")
    found = sorted(os.path.join(home, n) for n in os.listdir(home) if PART.fullmatch(n))
    for f in found:  # a link out of the log could name a file outside the directories the server may open
        if not lies_in(f, home):
            raise ValueError(_part_outside(f, table))
    return found


def open_listed(part: str, table: str):
    """A part file `parts` listed (named from its table's folder as resolved then), opened for reading if the file
    opened lies in that folder: checked on the descriptor, so a link swapped in after the listing is refused, for
    the part or for the table's folder itself."""
    return open_inside(part, os.path.dirname(part), "trace file", "give a trace file (not a pipe, device or directory)",
                       _part_outside(part, table))


def _part_outside(part: str, table: str) -> str:
    return f"{os.path.basename(part)!r} in {table}/ links outside the routing log; copy the file itself"
