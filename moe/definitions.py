"""The definition of every number moe-scope reports: the engine's metrics and the dashboard's views of them.

One text per key, written once: the engine's docstrings point here, the dashboard shows these texts
next to its charts (dashboard/definitions.py), and docs/ENGINE_API.md refers to them.
Texts are markdown; formulas sit in code spans so that `_`, `*` and `$` render literally.
Notation: T tokens, E experts, K top_k, D d_model, H d_expert, C capacity.
"""
from __future__ import annotations

from moe.definitions_placement import PLACEMENT_DEFINITIONS, VLLM_BALANCEDNESS

DEFINITIONS: dict[str, str] = {
    # --- per_expert() columns (the summary's demand / served / dropped are their totals)
    "demand": "(token, expert) assignments the router chose for expert e, before capacity: "
              "`demand_e = Σ_t routed[t,e]`. The summary's `demand` is `Σ_e demand_e` (T·K for top-k routers).",
    "served": "assignments expert e actually processed (kept by capacity): `served_e = Σ_t served[t,e]`. "
              "The summary's `served` is `Σ_e served_e`.",
    "dropped": "assignments cut by capacity: `dropped_e = demand_e − served_e`; they contribute nothing and "
               "the remaining weights are not renormalised. The summary's `dropped` is the total.",
    "load_share": "`served_e / Σ_e' served_e'`; 1/E for every expert at perfect balance, at most `1/K` with "
                  "top-k routing (a token's K choices are K different experts, so one expert serves at most T of "
                  "the T·K assignments): a collapsed expert reads `1/K`, 1 only for top-1.",
    "utilization": "`served_e / (T·K/E)`: served assignments against the perfectly balanced load; 1 = ideal, "
                   "at most `E/K` (an expert serves each token at most once).",
    "activation_sparsity": "share of the expert's hidden units that are near zero over the tokens it served: "
                           "`#{near zero} / (served_e·H)`, h the hidden (`act(w_gate·x) ⊙ (w_up·x)`, or "
                           "`act(w_up·x)` when not gated). sparsity_mode \"absolute\": `|h| < sparsity_eps`; "
                           "\"relative\": `|h| ≤ sparsity_eps·rms(h_t)`, rms over the H units of that token's "
                           "row (scale-free: tiny-weight models are not all \"sparse\"). The caption says which "
                           "one is shown. NaN for an idle expert, and for a trace from routing alone (trace_from_routing).",
    "output_rms": "`sqrt(Σ_t Σ_d y_e(x_t)_d² / (served_e·D))` over the tokens e served, before the gate "
                  "(unweighted). NaN for an idle expert and for a trace from routing alone.",
    "mean_gate": "mean combine weight of expert e over its served assignments: `Σ_t gates[t,e] / served_e`. "
                 "NaN for an idle expert.",
    "contribution": "`Σ_t contributions[t,e]`, the summed norm of what expert e added to the output; 0 when "
                    "idle (NaN for a trace from routing alone). The top contributors chart ranks experts by it.",
    "specialization": "output distinctness, `1 − cos(μ_e, μ)`: μ_e = mean of y_e(x_t) over the tokens e served, "
                      "μ = mean of y_e'(x_t) over all served assignments (t, e'), unweighted. 0 = the expert's "
                      "mean output points where everyone's does; up to 2. NaN for an idle expert and for a trace "
                      "from routing alone. It measures how "
                      "different the experts' output directions are, not what the router learned: random experts "
                      "on structureless input already read 0.5–0.9. For routing specialisation see `routing_nmi`.",
    # --- summary() keys
    "aux_loss_sigmoid": "with a sigmoid router `P_e` is the sigmoid score divided by its row sum; independent "
                        "sigmoids stay close to one another, so `P_e ≈ 1/E` for every expert and "
                        "`aux = E·Σ f_e·P_e ≈ Σ f_e = 1` however skewed the load is. Read the load from max/mean "
                        "load and CV instead.",
    "aux_loss": "`E · Σ_e f_e·P_e` with `f_e = demand_e/(T·K)` and `P_e = mean_t probs[t,e]`. Switch/Megatron "
                "scale: 1.0 at perfect balance, at most `E/K` (E for top-1): a token sends only one of its K "
                "assignments to any expert (`f_e ≤ 1/K`), so the maximum is reached when every token picks "
                "the same expert with probability ≈ 1. Hugging Face's Mixtral "
                "`load_balancing_loss` reports top_k times this value. For expert_choice every expert takes C "
                "tokens, so aux_loss = `E·C/(T·K)` ≈ 1 by construction and says nothing about balance.",
    "z_loss": "`mean_t (logsumexp_e router_logits[t,e])²` (ST-MoE's router z-loss, before its coefficient): "
              "grows with the scale of the logits.",
    "cv": "coefficient of variation of demand: `std_e(demand_e) / mean_e(demand_e)`, population std (ddof=0); "
          "0 = perfectly even.",
    "max_over_mean": "`max_e demand_e / mean_e demand_e`: 1 = even; at most `E/K` (E for top-1), when every "
                     "token chooses the same expert (one expert takes at most T of the T·K assignments).",
    "load_entropy": "`exp(H(s)) / E` with `s_e = demand_e / Σ demand` and `H(s) = −Σ_e s_e·ln s_e`: the "
                    "effective number of experts as a share of E; 1 = even; at least `K/E` (1/E for top-1), when "
                    "every token chooses the same K experts.",
    "dead_fraction": "share of experts that served no token: `#{e : served_e = 0} / E`.",
    "dropped_fraction": "`(Σ demand − Σ served) / Σ demand`: share of the router's choices cut by capacity.",
    "mean_confidence": "`mean_t min(p₁/p₂, 100)`, p₁ ≥ p₂ the two largest probs of token t; 1 = a tie between "
                       "the top two, 100 = capped. NaN when E = 1.",
    "tokens": "T = batch × sequence: the tokens in the forward.",
    "forward_ms": "wall time of the forward, statistics included, synchronised with the device (summed over the "
                  "forwards when statistics of several are merged, e.g. a text read in windows).",
    "tokens_per_s": "`T / (forward_ms / 1000)`: tokens through the layer per second of forward time.",
    "device": "the device that actually ran the forward (cpu, cuda:i or mps).",
    "nonfinite": "count of non-finite (NaN or ±inf) entries of router_logits: bad input is reported, not hidden.",
    "active_experts": "experts that served at least one token: `#{e : served_e > 0}`.",
    "capacity": "`C = ceil(capacity_factor·T·K/E)`, at most T: the most assignments one expert keeps (exact, with "
                "the factor as written: 0.55·100·1/5 gives 11, where float arithmetic rounds up to 12). "
                "None when dropless; expert_choice uses capacity_factor 1 when unset. With capacity_scope = "
                "sequence, T is replaced by the sequence length S and C applies to each sequence separately.",
    "topk_margin": "how close routing is to flipping (Megatron-LM's router diagnostics): per token, with its "
                   "probs sorted `p_(1) ≥ … ≥ p_(E)` (unbiased, no groups), `m_t = (p_(K) − p_(K+1)) / p_(K)` "
                   "(0 when p_(K) = 0). Summary: `mean_t m_t`; per expert: the mean of m_t over the tokens "
                   "routed to e (NaN when none). 0 = the K-th and (K+1)-th experts tie; NaN when K = E.",
    "bias_overlap": "share of the unbiased top-K assignments (the K largest probs of each token as numbers, i.e. "
                    "the K largest logits, lower index on ties) that the router also chose after expert_bias and "
                    "the group limit (n_group / topk_group): `Σ_t |U_t ∩ R_t| / (T·K)`; per expert "
                    "`|{t : e ∈ U_t ∩ R_t}| / |{t : e ∈ U_t}|`. "
                    "1 = the bias and groups changed nothing. NaN for hash and expert_choice routers.",
    "trace_from_routing": "a trace built from router logits and top-k choices made elsewhere (a real model, a "
                          "training run): every routing-side number is computed as for a forward, with served = "
                          "routed (no capacity); activation_sparsity, output_rms, contribution and specialization "
                          "need the experts' outputs and are NaN there.",
    # --- trace fields the charts read
    "router_logits": "`(x·Wᵀ + logit_bias) / temperature` (+ noise when set). The chart shows each expert's "
                     "spread over tokens (box = quartiles, whiskers = min and max, dot = median).",
    "probs": "`softmax(router_logits)`, or `sigmoid(router_logits)` divided by its row sum: each token's "
             "probabilities sum to 1.",
    "routed": "the router's choice before capacity (top-k by `score + expert_bias`, equal values by the larger "
              "logit, then the lower expert; or each expert's top C tokens for expert_choice). A Hugging Face "
              "model's layer takes its own router's choice (its torch.topk breaks the ties), unless a "
              "counterfactual changes how it selects (top-k, an expert's bias, or the temperature where the "
              "router has a selection bias or expert groups).",
    "gates": "combine weight of a served assignment: the unbiased score, divided by the sum over the chosen "
             "experts if normalize_topk, times routed_scaling_factor (expert_choice: probs · "
             "routed_scaling_factor, normalize_topk unused; hash: 1/K if normalize_topk, else 1, times "
             "routed_scaling_factor); 0 when not served.",
    "contributions": "`‖gates[t,e] · y_e(x_t)‖₂`: how much expert e moved token t's output; 0 when not served.",
    # --- views derived by the dashboard
    "ideal_load": "`T·K/E`: the assignments each expert would serve at perfect balance (dashed line). When "
                  "it lies on the capacity line (capacity_factor 1 gives C = T·K/E) one label says they coincide; "
                  "when the two lines are too close to label apart, one label names both values.",
    "conditional_coactivation": "`P(j | i) = coactivation[i,j] / coactivation[i,i]`: among the tokens expert i "
                                "served, the share that expert j also served; `coactivation[i,j]` counts tokens "
                                "served by both, so the diagonal is 1; the chart leaves it blank and scales its "
                                "colours to the largest off-diagonal value. Blank row: i served no token.",
    "topk_combinations": "each token's set of serving experts (sorted); count = tokens with exactly that set, "
                         "`share = count / T`. \"none\": every choice of the token was dropped "
                         "(or, for expert_choice, no expert picked it).",
    "token_entropy": "router entropy of token t in nats: `H_t = −Σ_e p[t,e]·ln p[t,e]`; 0 = one-hot, "
                     "ln E = uniform (dashed line).",
    "token_confidence": "`min(p₁/p₂, 100)` per token, p₁ ≥ p₂ its two largest probs; the mean over tokens is "
                        "mean_confidence. Undefined when E = 1.",
    "max_prob": "`p₁ = max_e p[t,e]`, the token's largest router probability.",
    "cluster_share": "`share[c,e] = served assignments (t,e) with label_t = c / all served assignments of "
                     "cluster c`: where each topic's tokens go; every row sums to 1. Colours span 0 to the "
                     "largest share shown.",
    "experts_per_token": "`n_t = Σ_e served[t,e]`: how many experts served token t, after capacity. The chart "
                         "counts tokens per n. Top-k without drops gives K for every token; drops lower it; "
                         "expert_choice spreads it around K (its mean is exactly K when C = T·K/E).",
    "nmi": "normalised mutual information of two labelings A, B of the same items (moe.metrics): with `p[a,b]` "
           "the share of items labelled (a, b), `I = Σ p[a,b]·ln(p[a,b] / (p[a]·p[b]))` and `NMI = 2·I / (H(A) + "
           "H(B))`, `H` the entropies of the margins (natural logs), in [0, 1]. 0 when one labeling is constant "
           "and the other is not (they share nothing); NaN (undefined, 0/0) when there is no item or both "
           "labelings are constant: a single topic served by a single expert says nothing about specialisation.",
    "worst": "**worst** always means the most uneven load: the largest `max_e load_e / mean_e load_e` (the first "
             "on ties), the busiest expert furthest above the mean, as in the Runs page's worst (step, layer). "
             "A view that ranks by another number names it instead (`highest_aux_layer`).",
    "highest_aux_layer": "the decoder layer with the largest aux_loss (the first on ties), highlighted in the Model "
                         "view's per-layer table.",
    "routing_nmi": "routing specialisation, the normalised mutual information between a token's topic L and "
                   "the expert E serving it, over served assignments (t, e): with `p[c,e]` = share of served "
                   "assignments of topic c to expert e, `I = Σ p[c,e]·ln(p[c,e] / (p[c]·p[e]))` and "
                   "`NMI = 2·I / (H(L) + H(E))`, `H` the entropies of the margins (natural logs). 0 = the router "
                   "ignores topics; 1 = each topic has its own experts; NaN with one topic served by one expert (see `nmi`). "
                   "Only where the input has topic labels.",
    "token_order": "heatmap rows are tokens sorted by topic (when the scenario has labels), then by top-1 "
                   "expert (the served expert with the largest gate; \"none\" last), then by index. Every group is "
                   "named left of its rows (a bracket spans them, a line joins the name when names are spread "
                   "apart), or, when the chart is too short to name them all, none is and the caption says so. "
                   "Hover shows the token index.",
    "hash_router_probs": "the hash router picks each token's experts from the token index alone: the "
                         "probabilities, confidence, entropy and logits below are computed from the router's "
                         "weights but play no part in the choice (they still enter aux loss and z-loss).",
    "load_sorted": "sorted view: experts ordered by demand, largest first (labels = expert ids); the shape of "
                   "the curve shows the imbalance at any E, where one colour per expert is unreadable.",
    "token_heatmap_aggregation": "tokens × experts heatmaps show one row per token up to a row limit; above it, "
                                 "rows next to each other in the chart's order (token order, or the sorted order "
                                 "of the sorted heatmaps) are grouped into bins and each cell is the bin's mean; a "
                                 "bin's label and hover name its tokens. In token order the bins are equal (sizes "
                                 "differ by at most one); sorted, each group (topic or top-1 expert) of n of the T "
                                 "tokens gets min(n, 1 + n·(limit − G) // T) near-equal bins of its own (G groups), "
                                 "so no bin mixes two groups and every group keeps a row.",
    "token_detail": "for the chosen token and every expert: its probability, logit, whether the router chose "
                    "it (routed), whether capacity kept it (served; routed but not served = dropped), its gate "
                    "and its contribution `‖gate·y_e(x_t)‖₂`.",
    "shared_output_rms": "`sqrt(Σ_t ‖s_t‖² / (T·D))`, s_t the shared experts' output for token t (after the "
                         "shared gate σ(x·w) when shared_gate). NaN without shared experts.",
    "shared_fraction": "share of the output norm carried by the shared experts: "
                       "`Σ_t ‖s_t‖ / (Σ_t ‖s_t‖ + Σ_t ‖r_t‖)`, r_t the routed output `Σ_e gates[t,e]·y_e(x_t)`; "
                       "0 = routed only, 1 = shared only. NaN without shared experts.",
    "nonfinite_output": "count of non-finite (NaN or ±inf) entries of the layer output y: catches bad input "
                        "even when the router never sees it (router = random) and float16 overflow.",
    # --- dashboard (#9 knobs): the load chart with per-sequence capacity
    "capacity_per_sequence": "with capacity_scope = sequence each of the B sequences keeps at most C assignments "
                             "per expert (C from its own S tokens), so the load chart's line is `B·C`, the most an "
                             "expert can serve over the forward; a busy expert may stay under it when its demand "
                             "is uneven across sequences.",
    # --- live mode (one row per training step)
    "task_loss": "`mean_{t,d} (y_t − target_t)²` on the step's batch: the synthetic task's MSE, where the target "
                 "of a token of topic c is `A_c·x` (a map partly private to the topic, so specialists help).",
    "live_load_share": "per step, `served_e / Σ_e' served_e'` on that step's batch, stacked to 1; equal bands "
                       "(1/E each) = perfect balance. Collapse with top-K: one band grows to `1/K` of the "
                       "chart, its most (a token's K choices are K different experts); one band fills the whole "
                       "chart only with top-1.",
    "expert_bias": "the router's selection-only bias b_e (DeepSeek-V3 aux-loss-free balancing): after each step "
                   "with balance = bias, `b_e += bias_rate·sign(mean_e' load_e' − load_e)` with load = demand "
                   "(routed tokens). It changes which experts are chosen, never the gate weights.",
    "router_saturation": "share of a fixed probe batch whose noiseless top-k expert set is the same as at the "
                         "previous step: 1 = the routing has settled, low = it is still moving. NaN for the random "
                         "router, which draws its routing afresh every forward (nothing to settle).",
    # --- routing trace files (moe.traces.readers, moe.traces.summary; the Runs page)
    "trace_load": "per layer, `load[s, e] = Σ_t [e ∈ top_k_index[t]]` over the tokens of step s (all records of "
                  "that (step, layer), micro-batches added): the assignments expert e received, before capacity "
                  "(a trace records the router's choice). A log too long for one row per step within the "
                  "heatmap's cell limit is drawn in rows of consecutive steps, each row their sum (the title says how "
                  "many steps a row holds).",
    "trace_max_over_mean": "per (step, layer), `max_e load[s, e] / mean_e load[s, e]`: 1 = even; at most `E/K` "
                           "(E for top-1), when every token chose the same expert. The **worst (step, layer)** is the one with the largest value "
                           "(the first on ties): the busiest expert furthest above the mean. A log too long for one "
                           "row per step is drawn in rows of consecutive steps, each the largest value among them.",
    "trace_probability_side": "aux_loss, z_loss and mean_confidence need the router's logits: a moe-scope trace "
                              "carries them, a Megatron-LM trace only with its logits sidecar "
                              "(logits_rank{R}.bin next to the file); without them they are blank (NaN), and only "
                              "load-side numbers (load, max/mean, cv, load_entropy, dead_fraction) are shown.",
    "trace_plan": "the placement planner (moe.parallel.placement.plan) fed with `Σ_s load[s, e]` of the chosen layer (or of "
                  "all layers summed): predicted assignments per rank for the plan and for contiguous blocks; "
                  "when the plan would not make the busiest rank lighter, the contiguous blocks are kept (and "
                  "said above the chart); **straggler (predicted)** = `max_r / mean_r` of those per-rank loads.",
    # --- a run's views (moe.traces.runstats; the Runs page, issue #17)
    "run_layer_expert": "at one step s, `load[s, l, e]`: the tokens routed to logical expert e at layer l (the "
                        "routing log's counts; for a per-(token, expert) trace, the assignments as in `trace_load`).",
    "run_percentiles": "per step, across layers (what Megatron-LM's users ask for, NVIDIA/Megatron-LM #2398): "
                       "**tokens per expert** p50 / p95 / max over the L·E cells `load[s, l, e]`; **max/mean** "
                       "p50 / p95 / max over the layers of `max_e load[s, l, e] / mean_e load[s, l, e]` (layers "
                       "that routed no token at that step are left out). Percentiles interpolate linearly between "
                       "the closest ranks (numpy's default). Our max/mean of one (step, layer) is the inverse of the "
                       "*balancedness* the stacks log, but over logical experts, not over EP ranks: SGLang's "
                       "`current_pass_balancedness` (ExpertDistributionRecorder) is the mean over layers of "
                       "`mean_r / max_r` of each GPU's tokens; vLLM's EPLB `balancedness` (`log_balancedness`) is "
                       + VLLM_BALANCEDNESS + ".",
    "run_dead_experts": "per (step, layer), `#{e : load[s, l, e] = 0}`: experts that received no token; the "
                        "**mean over layers** line is `Σ_l dead[s, l] / L`.",
    "run_hot_persistence": "expert e is **hot** at step s of a layer when it is among the top `N = ceil(E/10)` "
                           "experts by `load[s, e]` (lower index first on ties) and received a token. "
                           "**hot_steps** = steps it is hot; **hot_share** = `hot_steps / S`; **longest_run** = "
                           "the most consecutive steps (of the log's steps, in order) it stays hot; "
                           "**current_run** = the run still going at the last step. A persistent hot expert "
                           "keeps a long run; a rotating hot spot gives many short ones.",
    "run_slot_usage": "per-token routing of one (step, layer): `usage[k, e]` = tokens whose k-th chosen expert "
                      "(slot k, in the order the source records them, e.g. by score) is e; empty slots (-1) are "
                      "skipped.",
    "run_co_occurrence": "per-token routing of one (step, layer): `co[e, f]` = tokens that chose both e and f "
                         "among their top-k; the diagonal `co[e, e]` = tokens that chose e. Drawn while its E² "
                         "cells fit a heatmap's cell limit (the page names the limit when they do not).",
    # --- real models (Model view, model-report; issue #10)
    "pooled_aux": "the aux of all MoE layers pooled: `E·Σ_e f̄_e·P̄_e` with f̄, P̄ the layers' f and P summed over "
                  "every layer's tokens before the product (f̄ = all layers' assignments / Σ T·K, each layer with "
                  "its own K, as a counterfactual may change K at one layer). The Switch scale of the per-layer aux "
                  "column (1 = balanced, at most `E/K`: every layer sends every token to the same expert with "
                  "probability ≈ 1), but one collapsed layer is averaged with the healthy ones, so it barely moves "
                  "this number: read the per-layer column.",
    "pooled_hf_aux": "transformers' `load_balancing_loss` (Mixtral, Qwen-MoE, OLMoE, Ernie 4.5) on this text, "
                     "`K·E·Σ_e f̄_e·P̄_e`, the number a Hugging Face training log shows before "
                     "`router_aux_loss_coef` (K at perfect balance). transformers' f̄ counts each token's top-K of "
                     "the softmax probabilities alone: top_k × the pooled aux wherever the router chooses from its "
                     "probabilities; Ernie 4.5's router chooses with its correction bias added, so there the two "
                     "differ.",
    "next_token_loss": "`−log₂ p(token_{s+1} | tokens ≤ s)` in bits, from the model's logits at position s.",
    "counterfactual_loss_delta": "mean next-token loss with the counterfactual routing minus with the model's own, "
                                 "in bits per token, same text and weights; positive = the change costs bits. "
                                 "Layers after a changed one see changed inputs, so their routing moves too.",
    "counterfactual_sweep": "the counterfactual's settings applied to one MoE layer at a time, every other layer "
                            "keeping the model's own routing (one forward per layer; the layer choice does not "
                            "apply). **Δloss** = mean next-token loss in bits per token with the change at that "
                            "layer alone minus with the model's own routing (0 exactly when the setting is the "
                            "layer's own); **dropped fraction** = `Σ_e (demand_e − served_e) / Σ_e demand_e` at "
                            "the changed layer. The largest Δloss is the layer that the change hurts most.",
    "model_context": "the most positions one forward of the model is given: config.json's "
                     "`max_position_embeddings`, or the sequence length it was trained on (`training.json`'s "
                     "`config.seq_len`) when smaller; past it the model was never trained and its numbers describe "
                     "a broken model.",
    "context_windows": "a text longer than the context is read in **windows** of that many tokens, stride half of "
                       "it (the last window ends at the text's end); each token's logits and routing come from the "
                       "first window that holds it, where it has the most left context (≥ half a context past the "
                       "first window), and every layer statistic counts each token once. Routing is decided over the "
                       "whole window; a capacity is ranked among the window's scored tokens (C from their count, "
                       "the context tokens served in full), so the summary's capacity is the mean C over the "
                       "windows. 1 window = one forward of the whole text.",
    # --- expert parallel (the Expert parallel page, ep-report)
    "ep_assignments": "**assignments** of a rank = (token, expert) pairs its local experts compute; "
                      "**mean** = Σ assignments / W; **predicted** = the planner's `predicted_load` for the measured "
                      "per-expert load (a replicated expert's assignments are split in token order, near-equal chunks).",
    "ep_traffic": "**traffic[i, j]** = token rows rank i sends to rank j in the dispatch all-to-all: a token goes once "
                  "to every rank that serves it, however many of its experts live there; the diagonal stays local. "
                  "Bytes = rows × d_model × element size; the return trip carries d_model + n_experts fp32 per row.",
    "ep_times": "**gather_ms** = all-gather of the router logits; **a2a_ms** = count, token and output all-to-alls; "
                "**expert_wall_ms** = wall time in the rank's local experts; medians over the repeats; waiting for a "
                "slower rank counts in the collective's time. **expert_ms** = the experts' CPU time on CPU (it leaves "
                "out the time a rank waits for a core, not the slowdown that sharing caches, memory bandwidth and "
                "clock speed with other processes causes, so it varies between runs), the synchronised wall time on "
                "CUDA.",
    "ep_comparison": "**load_max_over_mean** = max over ranks of assignments / mean; **straggler_factor** = median "
                     "over the repeats of (max over ranks of expert_ms / mean; 1 = even); **straggler_min … max**, "
                     "**q1, q3** = its smallest and largest value and quartiles over the repeats; **a2a_share** = max "
                     "over ranks of a2a_ms / forward_ms; "
                     "**forward_ms** = the slowest rank's forward (all-gather, routing, all-to-alls, experts, "
                     "statistics).",
    **PLACEMENT_DEFINITIONS,
    # --- the dashboard's forward time (the Playground's header line and KPI row)
    "warm_forward_ms": "the Playground's forward time: the median wall time (statistics included, synchronised "
                       "with the device) of up to 3 repeats of the same forward on the same batch, run after the "
                       "first while their total stays within 0.3 s. The first forward after the settings change "
                       "pays one-off costs (memory allocation, kernel selection) and is not counted; a forward "
                       "that alone takes longer than 0.3 s, or whose repeat would not fit the memory budget, is not "
                       "repeated, and its single (cold) time is shown.",
    "warm_tokens_per_s": "`T / (warm_forward_ms / 1000)`: tokens through the layer per second of warm forward time.",
    # --- the Compare page: two synthetic layers side by side
    "compare_delta": "the Compare page's Δ table: each number as defined above for side A's and side B's forward "
                     "(each side a Playground link, run as the Playground runs it), and `B − A` of the unrounded "
                     "values, shown with 4 significant digits. The paired charts share one y range, so bars of equal "
                     "height are equal numbers; each chart's x axis is its own side's experts 0..E−1 (the sides "
                     "may have different E), and expert e has one colour on the page.",
    "compare_model_headline": "a model side's headline numbers (each side a Model-page link: a model, a text and "
                              "optionally a counterfactual routing): aux loss pooled over every MoE layer (the Model "
                              "page's pooled aux); CV, max/mean load and dead fraction the mean over MoE layers of "
                              "each layer's value; dropped fraction `Σ_layers dropped / Σ_layers demand`; loss the "
                              "mean next-token loss in bits per token over the text, and in bits per byte (total "
                              "bits / UTF-8 bytes of the predicted tokens, as the loss chart's title). The Δ column "
                              "is `B − A` of the unrounded values (4 significant digits shown); the two heatmaps "
                              "share one colour scale and the two loss charts one y range.",
    # --- the Model page's loss chart
    "rolling_loss": "the rolling mean of the next-token loss: at position s, the mean of the bits of the last 32 "
                    "predicted tokens up to s (fewer at the start: of positions 1..s).",
    "text_bits_per_byte": "mean loss in bits per token = Σ bits / predicted tokens; in bits per byte = Σ bits / "
                          "UTF-8 bytes of the predicted tokens (the first token is not predicted), so models with "
                          "different tokenizers compare; for a byte tokenizer the two are equal.",
}
