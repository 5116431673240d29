"""The verdict on a replay (moe.parallel.judge): one line with its numbers saying whether a planner beats the
current placement on the windows after planning (definition "placement_verdict"), and the numbers it names.
"""
from __future__ import annotations

import numpy as np

from moe.definitions_placement import OUR_PLANNER
from moe.parallel.judge import LayerReplay
from moe.parallel.schedules import p50


def verdict(results: list[LayerReplay], current: str = "contiguous", margin: float = 0.02) -> str:
    """One line with its numbers: the biggest relative gain (after / before − 1) of a planner over the current
    placement on the windows after planning (p50 of vLLM balancedness) over every layer and R, hot-expert persistence
    and the longest interval that keeps the gain. When no candidate beats the current placement by more than `margin`
    (relative) anywhere: "balanced already" if every layer's current p50 is at least 1 / (1 + margin) (its busiest
    rank within `margin` of the mean), else "no plan helps", naming the least balanced layer. A layer whose current
    p50 is 0 (idle) is not a candidate.
    The interval named is the longest whose p50 is within `margin` (absolute) of replanning every window and still
    beats the current placement's p50 by more than `margin` (relative)."""
    if any(len(r.windows) < 2 for r in results):
        return ("one window only: no window follows a plan, so nothing can be judged; use fewer steps per window "
                "(more windows), or a log of more steps")
    gain, r, name, R, before, after = best_gain(results)
    if gain == -np.inf:  # every layer's current p50 is 0: most of its windows after planning hold no token
        return ("nothing to judge: on every layer most windows after planning hold no token (p50 vLLM balancedness "
                "0, vLLM's value for an idle window); use longer windows so that each holds tokens")
    if not gain > margin:
        now = [(p50(x.next_window("current", x.redundant_slots[0])), x.layer) for x in results]
        least, worst = min(pair for pair in now if pair[0] > 0)  # idle layers (p50 0) not compared
        told = ("balanced already: no placement" if least >= 1 / (1 + margin) else  # the busiest rank within the
                f"no plan helps: although layer {worst}'s p50 balancedness is {least:.2f}, no placement")  # margin
        return (f"{told} beats {current} by more than {margin:.0%} on the windows after planning (best: layer "
                f"{r.layer}, {_who(name)} with R={R}, p50 balancedness {before:.2f} → {after:.2f})")
    steady = [every for every, value in sorted(r.intervals[(name, R)].items())  # still the gain: within margin of
              if value >= after - margin and relative_gain(before, value) > margin]  # every window, beating current
    every = max(steady) if steady else 1
    return (f"{_who(name)} with R={R} lifts the p50 balancedness of layer {r.layer} from {before:.2f} to "
            f"{after:.2f} on the windows after planning; {_persist(r)}; "
            f"replanning every {every} window{'s' if every > 1 else ''} keeps {r.intervals[(name, R)][every]:.2f}")


def best_gain(results: list[LayerReplay]) -> tuple:
    """(gain, layer replay, planner, R, p50 before, p50 after) of the biggest relative gain (after / before − 1) of a
    planner over the current placement on the windows after planning, over every layer and R (what `verdict` names);
    an idle layer (current p50 0) gains −inf."""
    best = None
    for r in results:
        for (name, R) in r.loads:
            if name == "current":
                continue
            before, after = p50(r.next_window("current", R)), p50(r.next_window(name, R))
            gain = relative_gain(before, after)
            if best is None or gain > best[0]:
                best = (gain, r, name, R, before, after)
    return best


def relative_gain(before: float, after: float) -> float:
    """after / before − 1 (relative, as the verdict's margin is); −inf where before is 0 (an idle layer) or after is
    not finite."""
    return after / before - 1 if before > 0 and np.isfinite(after) else -np.inf


def _who(name: str) -> str:
    return {"planned": f"planned ({OUR_PLANNER})", "eplb": "DeepSeek's EPLB"}[name]


def _persist(r: LayerReplay) -> str:
    """definition "hot_expert_persistence" in words, with its number (not when the n hottest take every expert)."""
    if r.hot_top >= r.windows.shape[1]:
        return (f"hot-expert persistence is not informative here: the {r.hot_top} hottest are all "
                f"{r.windows.shape[1]} experts (n: the largest R, or W when it is 0)")
    if not np.isfinite(r.persistence):
        return "hot-expert persistence cannot be measured here: no window before the last has an expert with tokens"
    return (f"{r.persistence:.0%} of the {r.hot_top} hottest experts of a window (those with tokens) are still among "
            f"the {r.hot_top} hottest in the next")
