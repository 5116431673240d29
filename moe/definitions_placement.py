"""The definitions of the placement replay's numbers (moe.parallel.replay / judge / eplb / export; `python -m moe plan`;
the Placement sections), merged into moe.definitions.DEFINITIONS: one text per key, written once."""
from __future__ import annotations

# What "our planner" of the placement replay and plan files is (moe.parallel.judge.plan_layout): written once here,
# shown by the verdict and the definitions.
OUR_PLANNER = ("our planner: the lighter of moe.parallel.placement.plan and, where E + R is a multiple of W, DeepSeek's "
               "global EPLB")
# What its layouts may hold, and what the serving files take: said once here, in the definition below.
TWO_SLOTS = ("a layout may give a rank two slots of one expert (DeepSeek's EPLB makes them): it serves two chunks of "
             "that expert's tokens; the SGLang and vLLM files take only layouts with a distinct expert per slot of a "
             "rank")

# vLLM's logged EPLB balancedness, what we verified of its history (vllm/distributed/eplb/eplb_state.py).
VLLM_BALANCEDNESS = ("`Σ_l mean_r / Σ_l max_r` over the MoE layers l and EP ranks r (`_compute_eplb_load_stats` in "
                     "vllm/distributed/eplb/eplb_state.py, since vllm-project/vllm PR #51813); before that fix, "
                     "eplb_state.py as read at commit 50feac95 reduced its (layers, ranks) token tensor over the layer "
                     "axis instead (`Σ_r mean_l / Σ_r max_l`: 1.0 for a model with one MoE layer, not a balance "
                     "across ranks), so balancedness logged by vLLM versions that compute it that way is not "
                     "comparable with these numbers (older versions that summed each rank's tokens first are)")

PLACEMENT_DEFINITIONS: dict[str, str] = {
    # --- placement replay (moe.parallel.replay / judge / eplb / export; `python -m moe plan`; issue #18)
    "balancedness_vllm": "per layer and window, `mean_r load_r / max_r load_r` over the W ranks (0 when no rank has "
                         "load): vLLM's EPLB balancedness of one layer (here one layer at a time; vLLM logs "
                         + VLLM_BALANCEDNESS + "). 1 = even; `1 / max_over_mean`.",
    "balancedness_sglang": "per layer and window, `(mean_r load_r + 1e-5) / (max_r load_r + 1e-5)`: SGLang's "
                           "utilization rate (compute_utilization_rate in python/sglang/srt/eplb/"
                           "expert_distribution.py, v0.5); equals vLLM's up to the 1e-5, and is 1 for a layer with "
                           "no load.",
    "rank_max_over_mean": "per layer and window, `max_r load_r / mean_r load_r` of the per-rank load: the **straggler "
                          "factor (predicted)** of trace_plan, from token counts; the EP view's measured straggler "
                          "factor divides expert *times* instead (ep_comparison). NaN when no rank has load.",
    "replay_rank_load": "**load_r** of a window = tokens (assignments) rank r serves in it: each logical expert's "
                        "count summed over the window's steps, sent to the slots that hold it; an expert with c "
                        "slots splits its n tokens into c contiguous chunks of near-equal size (sizes differ by at "
                        "most one; chunk i = tokens `[i·n // c, (i+1)·n // c)`) to its i-th slot, rank by rank: the rule of the "
                        "planner's predicted load (ep_assignments), so a replayed window equals what the "
                        "expert-parallel forward measures. Windows: consecutive runs of `window` steps, "
                        "N = max(1, S // window): a last partial window is dropped, except when the log is shorter "
                        "than one window, which is then the one window (all S steps). A planner's window k is "
                        "under its plan of window k − 1, so its window 0 is under the current placement (no plan "
                        "comes before it).",
    "replay_next_window": "each planner plans on window k's expert load and is measured on window k + 1: the honest "
                          "figure (a plan judged on the load it was made from flatters it). **current** = the "
                          "run's placement (its physical → logical map, slot p on rank p // (P / W), at the W the log "
                          "records; at another W, or where the log records none, \"the run's map on W ranks\"; else "
                          "contiguous blocks); **planned** = "
                          + OUR_PLANNER + " (moe.parallel.judge.plan_layout: by the busiest rank of window k; it keeps "
                          "the current placement when neither lightens that rank, so it never loses there; "
                          + TWO_SLOTS + "); **eplb** = "
                          "DeepSeek's "
                          "EPLB (deepseek-ai/EPLB eplb.py: groups to nodes, replicas within a node, packing to "
                          "GPUs; global when the groups do not divide over the nodes; needs E + R a multiple of W; "
                          "reimplemented from its rule with ties to the lower index in float64: DeepSeek's code sorts "
                          "with torch.sort, which does not order ties, in float32, so on tied loads, or loads past "
                          "2^24 tokens, its layout may differ). "
                          "p50 = median over the windows after a plan.",
    "replay_recorded": "**current, as recorded** (`recorded`): the run's own placement per rank and window as the "
                       "run recorded it, where the log holds counts per physical slot of its map (SGLang's per_pass "
                       "and per_token dumps, vLLM's EPLB window: the tokens of the rank whose state was saved, a "
                       "moe-scope log written from them): each slot's tokens, summed over the window's steps and over "
                       "the ranks whose files were read, on the rank that holds the slot (slot p on rank "
                       "p // (P / W), W the run's world size; where the log does not record it, as vLLM's EPLB state "
                       "and an SGLang dump whose rank files skip a rank do not, the W chosen here, the run's "
                       "placement only if that is the run's W, which a note says; a dump missing its last ranks' "
                       "files cannot be told from a smaller run). A slot stays on its rank when a rebalance changes "
                       "the expert it holds, so this needs no map; **current** is the same placement with each "
                       "expert's tokens (every step read through the log's last map) split over its slots by the "
                       "chunk rule (replay_rank_load), as every plan is measured, so the verdict compares plans with "
                       "**current**. The two differ where the run split a replicated expert's tokens otherwise, or "
                       "changed its map during the log. `recorded_next_window_p50` = its p50 vLLM balancedness on "
                       "windows 1 … N − 1 (those next_window_p50 reads). Not shown (a note says why) at a W other "
                       "than the one the log records, when the per-rank counts are not [steps, ranks, layers, "
                       "slots] of the map, or when the slots' counts do not sum, through the map, to the layer's "
                       "expert counts.",
    "replay_own_window": "each planner's plan of window k measured on window k itself: the flattering figure the "
                         "honest one (replay_next_window) is read against; `own_window_p50` = the median over windows "
                         "of its vLLM balancedness. **kept** (`kept_current_windows`) = the windows whose plan of ours "
                         "kept the current placement, because neither of its candidates lightened the busiest rank "
                         "of that window.",
    "replay_rebalance_interval": "replanning every N windows: plans made on windows 0, N, 2N, …, each measured on "
                                 "the N windows after it; the value is the p50 of vLLM balancedness over those "
                                 "windows. **rest** = each plan (at most 64, evenly spaced) measured on every later "
                                 "window of the run.",
    "hot_expert_persistence": "hot = among the n experts with the most tokens in a window and with at least one "
                              "token (as the Runs page's hot_mask; ties: the lower index), n = ReplaySettings.hot_top "
                              "when set, else the largest R replayed, or W when that R is 0 (at most E); "
                              "**persistence** = the share of the n hottest experts of a window that are still among "
                              "the n hottest in the next: the mean over windows k that have a hot expert of "
                              "|hot(k) ∩ hot(k + 1)| / |hot(k)| (not measurable when no window before the last has "
                              "one); **absorbed** = p50 over k of the share of window k + 1's tokens that go to "
                              "experts plan k replicated (any R: a plan that keeps the run's placement keeps its "
                              "replicas).",
    "placement_verdict": "the largest relative gain (p50 after / p50 before − 1) in p50 vLLM balancedness on the "
                         "windows after planning, over layers, planners and R; a layer whose current p50 is 0 (most "
                         "of its windows idle) is not compared, and \"nothing to judge\" when that is every layer; "
                         "when no planner beats the current placement by more than 2% (relative): \"balanced "
                         "already\" where every layer's current p50 is at least 1/1.02 (its busiest rank within 2% "
                         "of the mean), else \"no plan helps\", naming the least balanced layer; the interval "
                         "named is the longest whose p50 stays within 0.02 of replanning every window and still "
                         "beats the current placement's p50 by more than 2% (relative).",
    "placement_export": "one plan per layer from the whole log (or its last full window with --window). SGLang's "
                        "`--init-expert-location` JSON holds only `physical_to_logical_map` [num_layers, E + R] with "
                        "row i = decoder layer id i, counted from 0 (so the log's layer labels must be integers; a "
                        "Megatron-Core EP dump's labels are Megatron's layer_number, counted from 1: layer n is row "
                        "n − 1; num_layers = "
                        "--num-layers, default the largest layer id + 1; a layer the log does not route gets "
                        "SGLang's trivial row `arange(E + R) % E`); the vLLM-style file has one row per logged layer "
                        "in log order and adds ep_size, num_redundant_experts, num_logical_experts and layers; slot p "
                        "lies on rank p // ((E + R) / W), so both need E + R a multiple of W, and we write them with "
                        "distinct experts on a rank (the plan is made under that rule; reading accepts two slots of "
                        "one expert on a rank, as the stacks' own balancers write them). A layer's plan that has "
                        "fewer slots or two slots of one expert on a rank (moe.parallel.serving.serving_layout) is "
                        "padded to E + R slots with replicas (each rank takes the lightest experts of the ranks "
                        "after it, cyclically, else the least loaded experts, else a local search swaps the added "
                        "slots) where that leaves its busiest rank no heavier; else the lightest of "
                        "moe.parallel.placement.balanced, DeepSeek's global EPLB, the plan padded the same way, and "
                        "replica counts re-packed (r of the R extra slots to the busiest experts, the rest to the "
                        "lightest, for several values of r; the run's own counts), each with a distinct expert per "
                        "slot of a rank, where it is no heavier than the current placement; else that layer's serving "
                        "file is refused (a search, not a proof that no such layout exists). Our own file takes any "
                        "R.",
}
