"""What a loaded `torch.save` object may hold before a reader touches it (moe.traces.safeload.load_pt).

The file's size says nothing of what its tensors claim: `torch.ones(1).expand(64, 16384, 10**4)` is stored as one
element, and a reader that copies it (`astype`, `reshape`, `.numpy().tobytes()`) builds all 10**10. Nor does one
stored tensor bound what many references to it cost: 30 records naming one (1, 4M, 1) tensor took the SGLang reader
to 2.8 GB. So every tensor reference counts its whole shape (numel × element size) against the cap, and only plain
(strided, CPU, not nested) tensors of bool, integer or float values are let through: bits, quantized, sparse, meta
and nested tensors cannot become NumPy arrays, and reached the readers as tracebacks or unhelpful errors.
"""
from __future__ import annotations

MAX_OBJECTS = 1 << 20  # containers and tensors walked in one loaded object at most (each reference counts)
RESCAN_ITEMS = 64      # a container of more items is scanned once however often it is referenced (_tensors)
WIDE = 8               # bytes an integer or bool element is counted as at least: readers widen them to int64

# What one opcode of torch's weights-only unpickler can add to memory at most (CPython 3.11, 64-bit), counted
# before the pickle is loaded (check_pickle): one byte of EMPTY_SET builds a 216-byte set, so a 50 MB pickle of
# them built 4.3 GB before check_tensors could count the objects. Any other opcode builds at most one small object
# (an int, a tuple of items already counted, a stack or memo slot) plus its argument; REDUCE, NEWOBJ and BUILD
# rebuild a tensor or an OrderedDict; every pushed value may also take a slot in a container (a dict entry per pair).
PICKLE_BYTES = {"EMPTY_SET": 224, "EMPTY_DICT": 72, "EMPTY_LIST": 64, "BINPUT": 128, "LONG_BINPUT": 128,
                "MEMOIZE": 128, "REDUCE": 2048, "NEWOBJ": 2048, "BUILD": 2048, "BINPERSID": 512}
OPCODE_BYTES, SLOT_BYTES = 64, 64


class OverBudget(ValueError):
    """A file would take more than the bytes it may (its tensors, its pickle's objects, its decoded size)."""


def check_tensors(obj, path: str, cap: int):
    """obj, once every tensor in it (through dicts, lists and tuples) is a plain bool, integer or float tensor and all
    of them together, each reference counting its whole shape (element_bytes), take at most `cap` bytes; else
    ValueError (one line)."""
    import torch

    from moe.memory import BUDGET_ENV, describe_over
    plain = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
             torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64}
    total = 0
    for item in _tensors(obj, path):
        if item.layout != torch.strided or item.dtype not in plain or item.is_nested or item.device.type != "cpu":
            kind = "nested" if item.is_nested else item.device.type if item.device.type != "cpu" else str(
                item.layout).removeprefix("torch.")
            raise ValueError(f"{path!r} holds a {kind} tensor of {str(item.dtype).removeprefix('torch.')}; a "
                             f"routing dump holds plain integer or float tensors")
        total += element_bytes(item)
        if total > cap:
            total_text, cap_text = describe_over(total, cap)
            raise OverBudget(f"{path!r} holds tensors of {total_text} or more (each counted whole, as readers copy "
                             f"it), over the {cap_text} a routing file may take under the memory budget; give a "
                             f"shorter dump or raise {BUDGET_ENV}")
    return obj


def tensor_bytes(obj) -> int:
    """What check_tensors counts of an object it passed: element_bytes of every tensor reference."""
    return sum(element_bytes(item) for item in _tensors(obj, ""))


def _tensors(obj, path: str):
    """Every tensor reference in obj, through dicts, lists and tuples; ValueError past MAX_OBJECTS containers and
    tensors walked. Numbers and strings hold no tensor and are not walked: SGLang's per_token records keep each pass's
    input_ids and positions as lists of ints (a million tokens are two million of them). A container met again (a
    shared reference) is counted again but scanned once: a list of a million ints referenced 100 times in a 4.9 MB
    file took 30 s to scan 100 times."""
    import torch
    stack, walked, scanned = [obj], 1, {}
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (dict, list, tuple)):
            inner = scanned.get(id(item))          # the object is alive (obj holds it): its id stays its own
            if inner is None:
                inner = _inner(item, torch.Tensor)
                if len(item) > RESCAN_ITEMS:       # only long ones are kept: a million small lists kept cost
                    scanned[id(item)] = inner      # 120 MiB more than scanning them again
            walked += len(inner)                   # counted before they are stacked: a list holding itself 1,000
            if walked > MAX_OBJECTS:               # times grew the stack
                raise ValueError(f"{path!r} holds more than {MAX_OBJECTS:,} containers and tensors (or refers to "
                                 f"itself); a routing dump holds a few dicts of tensors")
            stack.extend(inner)


def _inner(container, tensor_type) -> list:
    """The containers and tensors a dict (keys and values), list or tuple holds, in order."""
    held = (dict, list, tuple, tensor_type)
    items = [*container.keys(), *container.values()] if isinstance(container, dict) else container
    return [v for v in items if isinstance(v, held)]


def element_bytes(tensor) -> int:
    """What one reference to a tensor counts: its whole shape, an integer or bool element at WIDE bytes at least (the
    readers' int64), a float at its own size (router weights are hashed as they are, never widened)."""
    size = tensor.element_size()
    return tensor.numel() * (size if tensor.is_floating_point() else max(size, WIDE))


def check_pickle(stream, path: str, cap: int, pickles: int = 1) -> None:
    """ValueError (one line) when unpickling the next `pickles` pickles of `stream` could build more than `cap` bytes
    of Python objects (PICKLE_BYTES per opcode, read with pickletools, nothing built), when its tuples, counted
    through shared references, are far more than its bytes (_Tuples: a second pass counts every list or dict at its
    final size where the first read one before it grew), or when it names an integer a hash could collide with
    (|n| >= 2^61 - 1: CPython hashes ints modulo that prime) or bytearray (bytearray(n) allocates n bytes); a pickle
    it cannot parse is left to torch.load, which refuses it. Reads the stream up to the last STOP (or the damage)."""
    from moe.memory import BUDGET_ENV, describe_over
    start = stream.tell()
    try:
        total, tuples, at = _scan(stream, pickles, cap, _Tuples())
        for _ in range(PASSES - 1):  # again, each memoized value at least at its final size the pass before
            if total > cap or not tuples.stale():
                break
            stream.seek(start)
            total, tuples, at = _scan(stream, pickles, cap, _Tuples(final=tuples.cells))
        if total <= cap and tuples.stale():
            raise _Refused("lists or dicts that grow after tuples took them, nested too deep to count")
    except _Refused as refused:
        raise ValueError(f"{path!r} holds a pickle that names {refused}, which a routing dump never holds; give the "
                         f"dump as torch.save wrote it") from None
    except Exception:  # damaged or not a pickle: torch.load says so
        return
    if total > cap:
        total_text, cap_text = describe_over(total, cap)
        raise OverBudget(f"{path!r} holds a pickle that could build {total_text} or more of Python objects when "
                         f"loaded, over the {cap_text} a routing file may take under the memory budget; give a "
                         f"shorter dump or raise {BUDGET_ENV}")
    if tuples.items > TUPLE_ITEMS + TUPLE_ITEMS_PER_BYTE * (at - start):
        raise ValueError(f"{path!r} holds a pickle whose tuples, strings and calls, counted at every shared "
                         f"reference, come to {tuples.items:,} or more items in {at - start:,} bytes: hashing or "
                         f"rebuilding them could take minutes or gigabytes; give the dump as torch.save wrote it")


class _Refused(Exception):
    """_scan: the pickle names what no routing dump holds (the words say what)."""


# CPython hashes an int modulo the prime 2^61 - 1, so ints n + k·(2^61 - 1) share one hash: int64 and uint64 values
# (a seed, int64 max) hold at most a dozen of each hash; larger ones could hold 40,000 (14 s of dict inserts)
TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the legacy format's first pickle
PASSES = 4  # _Tuples passes at most: a tuple holding a list that grows after takes two


def _scan(stream, pickles: int, cap: int, tuples: "_Tuples") -> tuple[int, "_Tuples", int]:
    """One pass over the opcodes: (bytes they could build, the tuple count, the offset reached)."""
    import pickletools
    total, cost, start, at = 0, PICKLE_BYTES.get, stream.tell(), stream.tell()
    for _ in range(pickles):
        for op, arg, at in pickletools.genops(stream):  # it stops after STOP: the next pickle follows
            total += cost(op.name, OPCODE_BYTES) + SLOT_BYTES
            if arg is not None and not isinstance(arg, (bool, float)):
                if isinstance(arg, int):
                    total += arg.bit_length() // 8
                    if not -(1 << 63) <= arg < 1 << 64 and arg != TORCH_MAGIC:
                        raise _Refused(f"an integer of {arg.bit_length()} bits")
                elif isinstance(arg, (str, bytes)):
                    total += len(arg)
                    if op.name == "GLOBAL" and arg == "builtins bytearray":
                        raise _Refused("bytearray (bytearray(n) allocates n bytes)")
            if total > cap or tuples.step(op, arg) > TUPLE_ITEMS + TUPLE_ITEMS_PER_BYTE * (at - start):
                return total, tuples, at
    return total, tuples, at


# A tuple's hash walks every item of its nested tuples (CPython does not cache it), through shared references: an
# auditor's 1 KB pickle T_{i+1} = (T_i, T_i) used T_30 as a dict key and held the GIL for 52 s inside torch.load. A
# tuple pushed on the unpickler's stack (built or fetched from the memo) counts its items so, and so does what a
# REDUCE or NEWOBJ builds from its arguments (torch.Size is a tuple: a reviewer's torch.Size of 32,768 ints, doubled
# 18 times, took 59 s); the sum may reach TUPLE_ITEMS plus TUPLE_ITEMS_PER_BYTE for each pickle byte read (a
# torch.save pickle builds a tensor and a few small tuples from its own bytes).
TUPLE_ITEMS, TUPLE_ITEMS_PER_BYTE = MAX_OBJECTS, 32


class _Tuples:
    """The unpickler's stack and memo with, for each value, the items a hash of it (or of what is built from it) may
    walk: what a tuple, REDUCE, NEWOBJ or FROZENSET builds counts 1 + the items of its arguments, a list, dict or set
    1 + what was put in it, anything else 1; `items`: the sum over every tuple, REDUCE, NEWOBJ, FROZENSET or memo
    value pushed. A memoized value is a cell (a stack value -1 - its index) that later APPENDs, SETITEMs and BUILDs
    grow, as they grow the object it stands for; 0 is a mark. The stack is held as runs of equal values (plain 1s are
    most of it), so the scan holds a few bytes where the unpickler builds objects."""

    def __init__(self, final: list | None = None) -> None:
        self.values, self.counts, self.memo, self.cells, self.items, self.memoized = [], [], {}, [], 0, 0
        self.final, self.read = final, {}  # a first pass's cells, to count at; cell -> its size when last read

    def stale(self) -> bool:
        """Whether a memoized value was read (put in a tuple, a call's arguments, a container) at less than its final
        size (a list or dict that grew after, or a tuple holding one): then another pass counts every memoized value
        at least at this pass's final size (values only grow)."""
        return any(self.cells[cell] > size for cell, size in self.read.items())

    def step(self, op, arg) -> int:
        kind, fixed, sliced, after = _EFFECTS.get(op) or _effect(op)
        if kind == OTHER and after == 1 and not fixed and not sliced:               # a number, a string, a global
            if isinstance(arg, (str, bytes)) and len(arg) > 1:                       # a string counts its length:
                self._push(len(arg))                                                 # a call may copy it
                return self.items
            if self.values and self.values[-1] == 1:
                self.counts[-1] += 1
            else:
                self.values.append(1)
                self.counts.append(1)
            return self.items
        if kind == MARK:
            self._push(0)
        elif kind == PUT:
            if arg is None:                                                          # MEMOIZE: the next index
                arg, self.memoized = self.memoized, self.memoized + 1
            top = self._pop()
            if top > 0:                                                              # a plain value: now a cell
                self.cells.append(top)
                top = -len(self.cells)
            self.memo[arg] = top
            self._push(top)
        elif kind == GET:
            ref = self.values[-1] if arg is None else self.memo.get(arg, 1)
            self._count(self._size(ref))
            self._push(ref)
        else:
            popped = self._to_mark() if sliced else 0
            for _ in range(fixed - 1 if kind == GROW else fixed):
                popped += self._size(self._pop())
            if kind == GROW:                                                         # the container, popped last
                target = self._pop()                                                 # (not read: it grows)
                if target < 0:
                    self.cells[-1 - target] += popped
                    self._push(target)
                else:
                    self._push(target + popped)
                return self.items
            for _ in range(after):
                self._push(1 + popped if kind in (BUILT, FILLED) else 1)
                if kind == BUILT:
                    self._count(1 + popped)
        return self.items

    def _size(self, value: int) -> int:
        if value >= 0:
            return value
        cell = -1 - value
        size = self.cells[cell] if self.final is None else max(self.cells[cell], self.final[cell])
        self.read[cell] = min(self.read.get(cell, size), size)
        return size

    def _count(self, size: int) -> None:
        if size > 1:
            self.items += size

    def _push(self, value: int) -> None:
        if self.values and self.values[-1] == value and value > 0:
            self.counts[-1] += 1
        else:
            self.values.append(value)
            self.counts.append(1)

    def _pop(self) -> int:
        value = self.values[-1]
        self.counts[-1] -= 1
        if not self.counts[-1]:
            self.values.pop()
            self.counts.pop()
        return value

    def _to_mark(self) -> int:
        """Pop every value above the last mark, and the mark; the sum of their sizes."""
        total = 0
        while self.values[-1]:
            total += self._size(self.values.pop()) * self.counts.pop()
        self._pop()
        return total


MARK, PUT, GET, BUILT, FILLED, GROW, OTHER = range(7)
_KINDS = {"MARK": MARK, "PUT": PUT, "BINPUT": PUT, "LONG_BINPUT": PUT, "MEMOIZE": PUT, "GET": GET, "BINGET": GET,
          "LONG_BINGET": GET, "DUP": GET, "TUPLE": BUILT, "TUPLE1": BUILT, "TUPLE2": BUILT, "TUPLE3": BUILT,
          "REDUCE": BUILT, "NEWOBJ": BUILT, "NEWOBJ_EX": BUILT, "FROZENSET": BUILT, "LIST": FILLED, "DICT": FILLED,
          "APPEND": GROW, "APPENDS": GROW, "SETITEM": GROW, "SETITEMS": GROW, "ADDITEMS": GROW, "BUILD": GROW}


_EFFECTS: dict = {}  # opcode -> _effect(opcode)


def _effect(op) -> tuple[int, int, bool, int]:
    """An opcode's effect on the stack: (kind, values popped below the mark, pops to the mark, values pushed); kind
    MARK, PUT (MEMOIZE's arg is None: the next index), GET (DUP's arg is None: the top), BUILT (a tuple, or what a
    REDUCE, NEWOBJ or FROZENSET builds from its arguments), FILLED (a list or dict of the values above the mark), GROW
    (APPEND(S), SETITEM(S), ADDITEMS, BUILD: the container below its new items grows by them) or OTHER."""
    import pickletools
    sliced = pickletools.stackslice in op.stack_before
    effect = _KINDS.get(op.name, OTHER), len(op.stack_before) - 2 * sliced, sliced, len(op.stack_after)
    _EFFECTS[op] = effect
    return effect


def check_pickles(f, archive, path: str, cap: int) -> None:
    """check_pickle on a torch.save file's object pickle: the zip format's `*/data.pkl` member (`archive`, its
    zipfile), or the legacy format's first five pickles (magic number, protocol, system info, the object, its storage
    keys), every time (a 1 KB pickle of shared tuples is enough to stall the server). A damaged archive is left to
    torch.load, which refuses it."""
    import io

    from moe.traces.zipfiles import DAMAGED
    if archive is None:
        f.seek(0)
        check_pickle(f, path, cap, pickles=5)
        return
    for info in archive.infolist():
        if info.filename.endswith("data.pkl"):
            try:  # read whole, as torch.load reads it (its size counts in the member sum): scanned from memory
                data = archive.read(info)
            except DAMAGED:
                return
            check_pickle(io.BytesIO(data), path, cap)
