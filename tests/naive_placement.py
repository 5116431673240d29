"""Our planner's rule as plain loops (moe.parallel.planner is checked against them): replicas to the expert with the
most load per replica, packing heaviest first to the lightest rank with room that does not hold the expert (ties:
fewer experts, then the lower rank), and the local search, one move or swap at a time."""
import numpy as np


def loop_replicate(load, R, W):
    count = [1] * len(load)
    for _ in range(R):
        best = None
        for e in range(len(load)):
            if count[e] < W and (best is None or load[e] / count[e] > load[best] / count[best]):
                best = e
        count[best] += 1
    return count


def loop_pack(load, count, W):
    items = sorted(((load[e] / count[e], e) for e in range(len(load)) for _ in range(count[e])),
                   key=lambda item: (-item[0], item[1]))
    slots = -(-len(items) // W)
    ranks, weight = [[] for _ in range(W)], [0.0] * W
    for w, e in items:
        free = [r for r in range(W) if len(ranks[r]) < slots and e not in ranks[r]]
        r = min(free, key=lambda r: (weight[r], len(ranks[r]), r))
        ranks[r].append(e)
        weight[r] += w
    return tuple(tuple(sorted(r)) for r in ranks)


def loop_best_step(ranks, w, weight, slots):
    """The local search's step as a plain loop (the reference for planner.best_step): every move of an expert off
    the busiest rank, then every swap, rank by rank; the first strictly lighter pair max wins."""
    b = int(np.argmax(weight))
    best, step = weight[b] * (1 - 1e-12), None
    for s in range(len(ranks)):
        for e in ranks[b]:
            if s == b or e in ranks[s]:
                continue
            backs = [None] if len(ranks[s]) < slots and len(ranks[b]) > 1 else []
            backs += [f for f in ranks[s] if f not in ranks[b] and w[f] < w[e]]
            for f in backs:
                d = w[e] - (0.0 if f is None else w[f])
                if max(weight[b] - d, weight[s] + d) < best:
                    best, step = max(weight[b] - d, weight[s] + d), (b, s, e, f)
    return step


def loop_refine(ranks, w):
    """The local search: loop_best_step until no step helps (at most 4·E steps); a rank's weight is the sum of its
    replicas in list order; a move appends to the receiving rank's list."""
    ranks = [list(r) for r in ranks]
    weight = [sum(w[e] for e in r) for r in ranks]
    slots = max(len(r) for r in ranks)
    for _ in range(4 * len(w)):
        step = loop_best_step(ranks, w, weight, slots)
        if step is None:
            break
        b, s, e, f = step
        ranks[b].remove(e)
        ranks[s].append(e)
        d = w[e]
        if f is not None:
            ranks[s].remove(f)
            ranks[b].append(f)
            d -= w[f]
        weight[b] -= d
        weight[s] += d
    return tuple(tuple(sorted(r)) for r in ranks)
