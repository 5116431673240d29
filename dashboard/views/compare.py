"""Compare: two synthetic layers (each a Playground link), two models on one text or a model and its counterfactual
(each a Model-page link), drawn with the same charts on the same scale, with a Δ table of the headline numbers.
Both sides are in this page's link (`?a=…&b=…`)."""
from __future__ import annotations

import pathlib

import streamlit as st

from dashboard import loaders, sidebar, state
from dashboard.compare_models import ModelSide, is_model_link, parse_model_side
from dashboard.compare_sides import (HEADLINE, MAX_SIDE_CHARS, SIDES, STATE_KEYS, Side, delta_table, describe,
                                     parse_side, playground_query, query_part, sides_to_query)
from dashboard.definitions import DEFINITIONS, caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.compare import LoadInput, confidence_pair, load_pair
from dashboard.quoting import quote
from dashboard.result import RunResult
from dashboard.tables import confidence_histogram
from dashboard.views import compare_model
from dashboard.views.load import EXPERT_CHOICE_NOTE, capacity_line, caption_keys, ideal_load

TITLE = "Compare"
MAX_TEXT_CHARS = MAX_SIDE_CHARS + 2048  # a whole URL: the query plus its address
PLACEHOLDER = "a Playground or Model-page link, or its query: ?preset=…&top_k=3"


def show() -> None:
    """The Compare page: the two links, each side's forward, the paired charts and the Δ table."""
    state.ensure(state.COMPARE_DEFAULTS)  # drawn on its own (a test), the app's state.init() has not run
    st.subheader(TITLE)
    st.caption("Any two of: two synthetic layers (paste a Playground link for each side), two models on one text, or "
               "a model and its counterfactual (paste a Model-page link for each side: the same link with the "
               "counterfactual switched on is the model against its counterfactual).")
    for note in st.session_state.get(state.COMPARE_LINK_NOTES, []):
        st.warning(note)
    sides = _inputs()
    query = sides_to_query(sides)
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)
    kinds = {type(side) for side in sides.values() if side.spec is not None}
    if len(kinds) > 1:
        st.error("One side is a Playground layer and the other a model: compare two of a kind (two Playground "
                 "links, or two Model-page links).", icon="⚠️")
        return
    if kinds == {ModelSide}:
        _models(sides)
        return
    results = {name: _result(name, side) for name, side in sides.items()}
    drawn = {name: result for name, result in results.items() if result is not None}
    for name, result in drawn.items():  # as the Playground shows them: non-finite values make the numbers moot
        for warning in result.warnings:
            st.warning(f"{name}: {warning}")
    if drawn:
        _charts(drawn)
    if len(drawn) == 2:
        _delta(drawn["A"], drawn["B"])


def _models(sides: dict) -> None:
    """Two model sides (or one, drawn alone): the paired charts and the Δ table. A model directory named by the link
    (mdir) is loaded only after its Load click, as on the Model page: a link alone never makes the server load one."""
    loaded = st.session_state.setdefault(state.COMPARE_LOADED, set())
    ready = {}
    for name, side in sides.items():
        if side.spec is None:
            continue
        if side.linked_dir and (name, side.spec.path) not in loaded:
            st.button(f"Load side {name}'s model, {quote(pathlib.Path(side.spec.path).name)} (named by the link)",
                      key=f"compare_load_{name}", on_click=loaded.add, args=((name, side.spec.path),))
            continue
        ready[name] = side.spec
    drawn = {name: t for name, spec in ready.items() if (t := compare_model.tables(name, spec)) is not None}
    if drawn:
        compare_model.draw(drawn)
    if len(drawn) == 2:
        compare_model.delta(drawn["A"], drawn["B"])


def _use_playground() -> None:
    """The button's callback (before the inputs draw): side A becomes the Playground's controls."""
    ss = st.session_state
    ss[STATE_KEYS["A"]] = playground_query(sidebar.current_values(), ss[state.PRESET])


def _inputs() -> dict[str, Side]:
    """The two text inputs, each side's notes and what it runs; the Playground button under A."""
    sides = {}
    for name, column in zip(SIDES, st.columns(2)):
        with column:
            text = st.text_input(f"Link {name}", key=STATE_KEYS[name], max_chars=MAX_TEXT_CHARS,
                                 placeholder=PLACEHOLDER, help="A Playground URL, or just its query string.")
            if name == "A":
                st.button("Use the Playground's current layer as A", key="compare_use_playground",
                          on_click=_use_playground)
            sides[name] = side = (parse_model_side(query_part(text), state.model_defaults())
                                  if is_model_link(text) else parse_side(text))
            for note in side.notes:
                st.warning(f"{name}: {note}")
            if side.error:
                st.error(f"{name}: {side.error}", icon="⚠️")
            elif isinstance(side, ModelSide) and side.spec is not None:
                st.caption(f"**{name}**: {side.spec.describe()}")
            elif side.spec is not None:
                st.caption(f"**{name}**: {describe(side.spec)}")
            else:
                st.caption(f"**{name}**: no link yet.")
    return sides


def _result(name: str, side: Side) -> RunResult | None:
    """The side's forward: reused while its spec is unchanged, or taken from the Playground or the other side when
    they ran the same spec; an error is shown and the other side still drawn. A side without a spec keeps nothing
    (a kept result counts in the memory budget every session shares)."""
    ss = st.session_state
    kept = ss.setdefault(state.COMPARE_RESULTS, {})
    if side.spec is None:
        kept.pop(name, None)
        return None
    same = [r for spec, r in [*kept.values(), (ss.get(state.RESULT_SPEC), ss.get(state.RESULT))]
            if spec == side.spec and r is not None]
    if same:
        kept[name] = (side.spec, same[0])
        return same[0]
    kept.pop(name, None)
    try:
        with st.spinner(f"Running side {name}…", show_time=True):
            result = loaders.run(side.spec)
    except (ValueError, RuntimeError, MemoryError) as err:  # bad input or the device refused: never a traceback
        st.error(f"{name}: could not run this configuration: {err}", icon="⚠️")
        return None
    kept[name] = (side.spec, result)
    return result


def _load_input(name: str, result: RunResult) -> LoadInput:
    capacity, capacity_name = capacity_line(result)
    return LoadInput(name, result.per_expert, ideal_load(result), capacity, capacity_name)


def _charts(results: dict[str, RunResult]) -> None:
    """The load per expert and the confidence histogram of each side, one y range per pair."""
    colors = expert_colors(max(r.config.n_experts for r in results.values()))  # expert e: one colour on the page
    loads = load_pair([_load_input(name, r) for name, r in results.items()], colors)
    hists = confidence_pair({name: confidence_histogram(r.trace) for name, r in results.items()})
    load_keys = list(dict.fromkeys(k for r in results.values() for k in caption_keys(r)))  # both sides' lines
    for figures, key, keys in ((loads, "load", load_keys), (hists, "confidence", ("token_confidence",))):
        for name, fig, column in zip(results, figures, st.columns(2)):
            column.plotly_chart(fig, width="stretch", key=f"compare_{key}_{name}")
        st.caption(caption(*keys))
        if key == "load" and any(r.config.router == "expert_choice" for r in results.values()):
            st.caption(EXPERT_CHOICE_NOTE)


def _delta(a: RunResult, b: RunResult) -> None:
    """The headline numbers of both sides and B − A, each with its definition."""
    st.markdown("**Headline numbers**")
    table = delta_table(a.summary, b.summary)
    st.table(table.style.format("{:.4g}"))  # 4 significant digits shown; the table keeps the unrounded values
    st.caption(caption(*(key for _, key in HEADLINE), "compare_delta")
               + "  \nNo loss row: a synthetic layer has no training target (loss is a model's).")
    if "sigmoid" in (a.config.score, b.config.score):
        st.caption(f"**aux loss with a sigmoid router:** {DEFINITIONS['aux_loss_sigmoid']}")
