"""Our planner vectorised over rows (moe.parallel.planner, judge.plan_rows) against loops written here from its rule:
replicas to the expert with the most load per replica, packing heaviest first to the lightest rank with room that does
not hold the expert (ties: fewer experts, then the lower rank), the local search on every row, and the per-window
choice between the balanced layout, the current placement and DeepSeek's layout."""
import numpy as np
import pytest

from moe.parallel.eplb import eplb_layout
from moe.parallel.judge import plan_rows
from moe.parallel.placement import contiguous, plan
from moe.parallel import greedy, planner
from moe.parallel.planner import balanced_rows, pack, rank_lists, refine, replicate
from naive_placement import loop_pack, loop_refine, loop_replicate
from moe.parallel.replay import Layout, from_map, from_placement, rank_load, to_placement


def random_load(rng, E):
    kind = rng.integers(0, 3)
    if kind == 0:
        return rng.integers(0, 4, size=E).astype(float)  # small counts: many ties, zeros
    if kind == 1:
        return rng.multinomial(int(rng.integers(1, 400)), rng.dirichlet(np.full(E, 0.3))).astype(float)
    return rng.integers(50, 60, size=E).astype(float)      # near-even


def test_replicate_and_pack_are_the_loops():
    rng = np.random.default_rng(11)
    for _ in range(300):
        W = int(rng.integers(1, 7))
        E = int(rng.integers(W, 5 * W + 2))
        R = int(rng.integers(0, E * (W - 1) + 1)) if W > 1 else 0
        load = random_load(rng, E)
        count = replicate(load, R, W)
        assert count.tolist() == loop_replicate(load, R, W), (load.tolist(), R, W)
        assert pack(load, count, W) == loop_pack(load, count, W), (load.tolist(), count.tolist(), W)


def test_pack_is_the_loop_with_many_ranks():
    """Up to 40 ranks (the packing's winner tree over up to 64 leaves, some of them padding), with ties and zeros."""
    rng = np.random.default_rng(12)
    for case in range(60):
        W = int(rng.choice([7, 9, 16, 17, 33, 40]))
        E = int(rng.integers(W, 3 * W + 2))
        R = int(rng.integers(0, min(E * (W - 1), 2 * W) + 1))
        load = random_load(rng, E)
        count = replicate(load, R, W)
        assert pack(load, count, W) == loop_pack(load, count, W), (load.tolist(), count.tolist(), W)


def test_compiled_gathers_and_packing_refuse_indices_out_of_range():
    """The compiled loops do not check bounds: their wrappers do, before a bad index could read past an array."""
    a = np.arange(6.0).reshape(2, 3)
    assert greedy.take_rows(a, [[2, 0], [1, 1]]).tolist() == [[2.0, 0.0], [4.0, 4.0]]
    assert greedy.put_rows(np.zeros((2, 3)), [[2, 0], [1, 0]], [[5, 6], [7, 8]]).tolist() == [[6, 0, 5], [8, 7, 0]]
    for index in ([[3, 0], [1, 1]], [[0, -1], [1, 1]], [[0, 1]]):
        with pytest.raises(IndexError, match="must be integers in 0..2"):
            greedy.take_rows(a, index)
        with pytest.raises(IndexError, match="must be integers in 0..2"):
            greedy.put_rows(np.zeros((2, 3)), index, 1)
    with pytest.raises(IndexError, match="must be integers in 0..2"):
        greedy.pack(a, 2, 2, item=[[0, 1, 3], [0, 1, 2]])
    with pytest.raises(IndexError, match="must be integers in 0..2"):
        greedy.take_rows(a, [[0.0, 1.0], [1.0, 1.0]])
    for weights in ([[1.0, np.inf]], [[1.0, np.nan]], [[1e308, 1e308, 1.0]]):  # the last: a pack's load overflows
        with pytest.raises(ValueError, match="finite"):
            greedy.pack(np.array(weights), 2, 2)
    with pytest.raises(ValueError, match="permutation"):
        greedy.pack(a, 2, 2, item=[[0, 1], [2, 1]], by_item=True)
    with pytest.raises(ValueError, match="permutation"):
        greedy.pack([[3.0, 2.0, 1.0]], 2, 2, item=[[0, 0, 1]], by_item=True)
    assert pack(np.array([5.0, 3.0, 2.0]), np.array([1, 1, 0]), 2) == ((0,), (1,))  # expert 2 (no slot): not read
    w, one = np.array([[3.0, 1.0]]), np.ones((1, 2), dtype=np.int64)  # an order names every item once, in range
    for order in ([[0, 2]], [[0]], [[1.0, 0.0]]):
        with pytest.raises(IndexError, match="must be integers in 0..1"):
            greedy.top_up(w, 1, None, order)
        with pytest.raises(IndexError, match="must be integers in 0..1"):
            greedy.replica_order(w, one, order)
        with pytest.raises(IndexError, match="must be integers in 0..1"):
            greedy.slot_order(w, one, np.zeros((1, 0), dtype=np.int64), order)
    with pytest.raises(IndexError, match="must be integers in 0..1"):
        greedy.slot_order(w, [[2, 1]], [[5]], [[0, 1]])  # the item that won the extra slot


def test_plan_rows_refuses_a_current_placement_missing_an_expert():
    """An unused slot (-1) does not count as an expert: expert 3 is on no rank, so every window's mean load per rank
    (its tokens / W) would not be what the placement serves."""
    current = Layout(np.array([-1, 0, 1, 2, 0, 1]), np.array([0, 0, 0, 1, 1, 1]), 2)
    with pytest.raises(ValueError, match="give a placement of every expert 0..3 on 2 ranks"):
        plan_rows(np.ones((3, 4), dtype=np.int64), 2, 0, current)


def test_compiled_code_without_a_cache_folder_compiles_in_the_process():
    """numba cannot cache a function whose source file it cannot find (here: code built from a string; the same
    happens when neither the package nor the user's cache folder is writable): moe.compiled compiles it anyway."""
    from numba import njit

    from moe import compiled
    space = {}
    exec("def twice(x):\n    return 2 * x\n", space)
    with pytest.raises(RuntimeError, match="cannot cache"):
        njit(cache=True)(space["twice"])
    assert compiled.jit(space["twice"])(21) == 42
    assert compiled.ufunc(space["twice"])(np.array([1, 2])).tolist() == [2, 4]


def test_heaviest_first_is_a_stable_sort_by_weight_for_counts_and_floats():
    """Token counts below 2**16 take numpy's radix sort; others (larger, negative, float) the stable float sort: the
    same order, ties to the lower item."""
    rng = np.random.default_rng(15)
    for high in (4, 300, 2 ** 16, 2 ** 40):
        counts = rng.integers(0, high, size=(50, 30))
        want = np.array([sorted(range(30), key=lambda e: (-row[e], e)) for row in counts.tolist()])
        assert (greedy.heaviest_first(counts) == want).all()
        assert (greedy.heaviest_first(counts.astype(float) / 2) == want).all()
    assert greedy.heaviest_first(np.array([[-1, 3, 3, -1]])).tolist() == [[1, 2, 0, 3]]


def test_balanced_rows_are_pack_then_refine_on_every_row():
    """The cheap test that skips the local search on a row never skips a row the search would change."""
    rng = np.random.default_rng(12)
    skipped = changed = 0
    for _ in range(40):
        W = int(rng.integers(2, 7))
        E = int(rng.integers(W, 5 * W + 2))
        R = int(rng.integers(0, min(E * (W - 1), 2 * W) + 1))
        loads = np.stack([random_load(rng, E) for _ in range(12)])
        expert, rank = balanced_rows(loads, W, R)
        count = greedy.top_up(loads, R, W)[0]
        packed_e, packed_r = planner.pack_rows(loads, count, W)
        for x, load in enumerate(loads):
            assert count[x].tolist() == loop_replicate(load, R, W)
            packed = loop_pack(load, count[x], W)
            assert planner.rank_lists(packed_e[x], packed_r[x], W) == packed
            want = loop_refine(packed, load / count[x])
            may = planner.may_refine(packed, load / count[x])
            assert refine(packed, load, count[x]) == want
            assert rank_lists(expert[x], rank[x], W) == want, (load.tolist(), R, W)
            assert may or want == packed, (load.tolist(), R, W)  # a skipped row is one the search leaves alone
            changed += want != packed
            skipped += not may
    assert changed > 20 and skipped > 20  # both paths are exercised


def reference_plan(load, W, R, current: Layout, distinct=False):
    """The per-window rule of definitions.OUR_PLANNER with the one-load API: placement.plan against the current
    placement (or contiguous blocks), DeepSeek's global EPLB where strictly lighter, the current one unless lighter."""
    E = len(load)
    now = to_placement(current, E) if current.n_slots == E else None
    best = from_placement(plan(load, W, R, current=now).placement)
    if (E + R) % W == 0:
        theirs = eplb_layout(load, R, W)
        ranks = theirs.rank_experts()
        ok = not distinct or all(len(set(r)) == len(r) for r in ranks)
        if ok and rank_load(load[None], theirs).max() < rank_load(load[None], best).max():
            best = theirs
    if rank_load(load[None], best).max() < rank_load(load[None], current).max():
        return best, False
    return current, True


@pytest.mark.parametrize("distinct", [False, True])
def test_plan_rows_is_the_one_load_rule_on_every_row(distinct):
    rng = np.random.default_rng(13 + distinct)
    kept_seen, wide = set(), 0
    for case in range(40):
        W = int(rng.integers(1, 6))
        E = int(rng.integers(max(W, 2), 4 * W + 3)) if case % 4 else int(rng.integers(1, W + 1))
        R = int(rng.integers(max(0, W - E), max(W - E, min(E * (W - 1), 2 * W)) + 1))
        if (case % 3 == 0 or W > E) and W > 1:  # a recorded map with replicas, slots not in rank order
            row = np.concatenate([rng.permutation(E), rng.integers(0, E, size=W - E % W + W * (E < W))])
            current = from_map(row, W)
            wide += W > E
        else:
            current = from_placement(contiguous(E, W))
        loads = np.stack([random_load(rng, E) for _ in range(10)]).astype(np.int64)
        expert, rank, kept = plan_rows(loads, W, R, current, distinct)
        for x, load in enumerate(loads):
            want, was_kept = reference_plan(load, W, R, current, distinct)
            used = expert[x] >= 0
            got = Layout(expert[x][used], rank[x][used], W)
            assert kept[x] == was_kept, (load.tolist(), W, R)
            assert got.slot_expert.tolist() == want.slot_expert.tolist(), (load.tolist(), W, R)
            assert got.slot_rank.tolist() == want.slot_rank.tolist(), (load.tolist(), W, R)
            kept_seen.add(bool(was_kept))
    assert kept_seen == {True, False} and wide >= 3  # W > E (the run's map, no contiguous blocks) is among them


def test_the_local_search_follows_list_order_like_the_loop():
    """refine on packings whose ranks list their experts in any order (a move appends; ties go to the first in list
    order) ends where the loop ends, step for step."""
    rng = np.random.default_rng(14)
    moved = 0
    for _ in range(150):
        W = int(rng.integers(2, 6))
        E = int(rng.integers(W, 4 * W + 2))
        R = int(rng.integers(0, W + 1))
        load = random_load(rng, E)
        count = replicate(load, R, W)
        ranks = [list(r) for r in pack(load, count, W)]
        for r in ranks:
            rng.shuffle(r)
        want = loop_refine(ranks, load / count)
        assert refine(ranks, load, count) == want, (ranks, load.tolist(), count.tolist())
        moved += want != tuple(tuple(sorted(r)) for r in ranks)
    assert moved > 20


def test_replicate_with_many_redundant_slots_is_the_loop():
    """R up to E·(W − 1) on up to 120 experts (the heap of candidates holds up to R of them; ties and zeros), capped
    at W replicas an expert as the loop caps them."""
    rng = np.random.default_rng(13)
    for _ in range(40):
        W = int(rng.integers(2, 9))
        E = int(rng.integers(20, 121))
        R = int(rng.integers(E, E * (W - 1) + 1))
        load = random_load(rng, E)
        assert replicate(load, R, W).tolist() == loop_replicate(load, R, W), (E, R, W)
