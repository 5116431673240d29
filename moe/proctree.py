"""A process and all its descendants, read from /proc (Linux): list them, measure them, end them.

torchrun starts every rank in a session of its own, so killing torchrun's process group leaves the ranks
running; only a walk of the parent links reaches them. Elsewhere than Linux the walk finds only the root
and `die_with_parent` does nothing (the process group kill still ends torchrun).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


Proc = tuple[int, int]  # (pid, start time in clock ticks since boot): a pid reused later is another Proc


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process this user can see (empty without /proc)."""
    out = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "(comm)", which may hold spaces
        if len(fields) > 19 and fields[0] != "Z":  # a zombie has ended: it only waits to be reaped
            out[int(name)] = (int(fields[1]), int(fields[19]))
    return out


def tree(root: int) -> list[Proc]:
    """root and every live descendant, parents first (without /proc: root alone, start time 0)."""
    table = _table()
    if not table:
        return [(root, 0)] if _exists(root) else []
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root] if root in table else []
    while todo:
        pid = todo.pop(0)
        out.append((pid, table[pid][1]))
        todo += children.get(pid, [])
    return out


def alive(procs: list[Proc]) -> list[Proc]:
    """The processes among `procs` still running (same pid and start time, not a zombie)."""
    table = _table()
    if not table:
        return [p for p in procs if _exists(p[0])]
    return [p for p in procs if p[0] in table and table[p[0]][1] == p[1]]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def memory_bytes(procs: list[Proc]) -> int:
    """Memory of these processes together: the sum of their proportional set sizes (a page shared by n of
    them, such as the torch libraries, counts 1/n in each), the resident set size where Pss is unknown."""
    total = 0
    for pid, _ in procs:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            try:
                with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                pass  # ended meanwhile
    return total


def kill_tree(root: int, known: list[Proc] = (), grace_s: float = 1.0, group: bool = True) -> list[Proc]:
    """SIGTERM root's process group (when `group`), root, every descendant and the `known` processes seen
    before (an ended parent's children are re-parented, out of root's tree); SIGKILL what is left after
    grace_s. Returns the processes still alive: none, unless a signal was refused."""
    gid = root if group else None
    procs = _with_children([*tree(root), *known])
    _signal(gid, procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
        more = [p for p in _with_children(procs) if p not in procs]  # started meanwhile
        _signal(None, more, signal.SIGTERM)
        procs += more
    for _ in range(20):
        procs = _with_children(procs)
        if not alive(procs):
            break
        _signal(gid, procs, signal.SIGKILL)
        time.sleep(0.05)
    return alive(procs)


def _with_children(procs: list[Proc]) -> list[Proc]:
    return list(dict.fromkeys([*procs, *(c for p in alive(procs) for c in tree(p[0]))]))


def _signal(group: int | None, procs: list[Proc], sig: int) -> None:
    if group is not None:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid, _ in alive(procs):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); nothing elsewhere.

    If the parent ended before the signal was armed (getppid changed meanwhile), exit at once. The parent's pid
    itself says nothing: torchrun may be pid 1 in a container."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
