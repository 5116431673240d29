"""Every session key the dashboard keeps, and the one `init()` that sets them up (the app calls it first).

st.session_state belongs to one browser session: nothing here is shared between sessions. A widget's value lives
under its key. Streamlit forgets the values of widgets a run does not draw (the sidebar's controls while the Model
page is open, say); `init()` stores them again at the start of every run, so each page keeps its state while
another is open. The opening link is read once, on the session's first run.
"""
from __future__ import annotations

import streamlit as st

from moe.hf.load import default_model_dir
from moe.traces.follow import IDLE_AFTER_S
from moe.train.presets import preset_value

from moe import available_devices
from dashboard.compare_sides import LINK_KEYS as COMPARE_LINK_KEYS, STATE_KEYS as COMPARE_KEYS, sides_from_query
from dashboard.limits import sanitize
from dashboard.links import ep_from_query, from_query
from dashboard.model_link import EXAMPLES, LINK_DIR_KEY, bundle_choice, from_link
from dashboard.presets import CONTROL_DEFAULTS

INITIALISED = "_initialised"            # the opening link has been read
VIEW_LINK_READ = "_view_link_read"      # ... and its `view` followed (dashboard.routes)
# --- Playground: the synthetic layer (the controls' keys are CONTROL_DEFAULTS's, the engine's knob names)
PRESET = "preset"                       # the sidebar's preset
VIEW = "view"                           # the Playground's sub-view (Overview … Live)
DEFAULT_VIEW = "Overview"
RESULT, RESULT_SPEC = "result", "result_spec"   # the last good forward, and the RunSpec it ran
LINK_NOTES = "link_notes"               # what the opening link asked for and did not get
LINK_NOTES_QUERY = "link_notes_query"   # the page as the link opened it: the notes go when it changes
LOAD_ORDER, INSPECTOR_TOKEN = "load_order", "inspector_token"
# --- Live (a Playground sub-view): the session's own trainer
LIVE_SETUPS = ("Collapse and cure", "Sidebar layer")
TRAINER, LIVE_PLAYING, LIVE_FIGURES = "trainer", "live_playing", "live_figures"
LIVE_SIGNATURE, LIVE_ERROR = "live_signature", "live_error"   # the layer the trainer was built for; why it stopped
LIVE_SWITCHED, LIVE_TICK_MS = "live_switched", "live_tick_ms"  # balancing just switched; the last tick's time
# --- Model page
MODEL_LAST = "model_last"               # the last good analysis (shown under an error)
MODEL_LINK_NOTES = "model_link_notes"   # the link's Model keys that were refused
MODEL_LINK_DIR = LINK_DIR_KEY           # a model directory named by the link, waiting for a click
CF_LAST = "cf_last"                     # the last good counterfactual: ((path, text, max_tokens, fingerprint), tables)
CF_DEFAULTS = {"cf_on": False, "cf_layer": "all", "cf_top_k": 0, "cf_capacity": 0.0, "cf_drop": "position",
               "cf_temperature": 1.0, "cf_bias_expert": -1, "cf_bias": "hot", "cf_sweep": False}
# --- Runs page
TRACE_VIEW = "trace_view"               # the opened trace: {"key": what was asked, "summary": TraceSummary}
TRACE_FOLLOWER = "trace_follower"       # a followed routing log: {"path", "follower": LogFollower, "summary"}, or
#   after an error {"path", "summary": None, "failed": what the read depended on then, "error"}
TRACE_FOLLOW, TRACE_IDLE_AFTER = "trace_follow", "trace_idle_after"  # the Follow toggle; idle after that many s
TRACE_FOLLOW_FULL_RUN = "trace_follow_full_run"  # True while a whole-page run polls (the poll fragment's own reruns:
                                                 # False), so only a fragment rerun that finds steps reruns the page
TRACE_DEFAULTS = {"trace_source": "Upload", "trace_experts": None, "trace_layers": 0, "trace_score": "softmax",
                  "trace_path": "", TRACE_FOLLOW: False, TRACE_IDLE_AFTER: IDLE_AFTER_S}
# --- Expert parallel page
EP_JOB, EP_RUNS = "ep_job", "ep_runs"   # the running job; the finished runs' documents
EP_LINK_NOTES = "ep_link_notes"         # the link's Expert parallel keys that were refused
EP_DEFAULTS = {"ep_world": 2, "ep_slots": 2}
EP_PLAN_JOB, EP_PLAN_RUNS = "ep_plan_job", "ep_plan_runs"  # a Placement plan run for real: the job; its documents
# --- Placement section (dashboard.views.placement), drawn on the Runs page ("runs") and the EP page ("ep"): its
# widgets' keys are `placement_key(prefix, name)`; their options depend on the log, so the view checks the values
PLACEMENT_PREFIXES = ("runs", "ep")
PLACEMENT_WIDGETS = ("world", "slots", "window", "nodes", "layer", "metric", "heat", "export_slots", "export_from",
                     "real_planner", "real_slots")
PLACEMENT_ELEMENTS = ("balance_chart", "heat_chart", "interval_chart", "interval_table", "hot_chart", "file_moe_scope",
                      "file_sglang", "file_vllm", "real_run", "real_cancel", "real_chart", "plan_all",
                      "plans_asked", "window_of")  # no value to keep


def placement_key(prefix: str, name: str) -> str:
    """The session key of one Placement widget or element (`name` from PLACEMENT_WIDGETS or PLACEMENT_ELEMENTS)
    in the section `prefix`."""
    if name not in PLACEMENT_WIDGETS + PLACEMENT_ELEMENTS:
        raise KeyError(f"no Placement widget {name!r}")
    return f"{prefix}_place_{name}"
# --- Compare page: two Playground links (the text inputs), the forwards they ran, the link's refused sides
COMPARE_DEFAULTS = {key: "" for key in COMPARE_KEYS.values()}
COMPARE_RESULTS = "compare_results"     # {"A": (RunSpec, RunResult), ...}: a side reruns only when its spec changes
COMPARE_LINK_NOTES = "compare_link_notes"
COMPARE_LOADED = "compare_loaded_dirs"  # {(side, model directory)}: linked directories the visitor chose to load


def model_defaults() -> dict:
    """The Model page's widget values before anyone changes them (the link keeps only the differences)."""
    path = default_model_dir()
    return {"model_path": path, "model_bundle": bundle_choice(path), "model_example": "code",
            "model_text": EXAMPLES["code"], "model_max_tokens": 512, "model_layer": 0, "model_sort": "layer",
            "model_sort_desc": False,
            **CF_DEFAULTS}


def live_defaults() -> dict:
    coef = {name: preset_value("collapse", name) for name in ("aux_coef", "z_coef", "bias_rate")}
    return {"live_setup": LIVE_SETUPS[0], "live_balance": "none", "live_aux_coef": coef["aux_coef"],
            "live_z_coef": coef["z_coef"], "live_bias_rate": coef["bias_rate"], "live_speed": 5}


def defaults() -> dict:
    """Every key that has a value before the first widget draws, with that value."""
    return {VIEW: DEFAULT_VIEW, **model_defaults(), **live_defaults(), LIVE_PLAYING: False, LIVE_FIGURES: {},
            **TRACE_DEFAULTS, **EP_DEFAULTS, **COMPARE_DEFAULTS}


def kept_widgets() -> list[str]:
    """The widgets whose values outlive a run that does not draw them (buttons and uploads have none to keep)."""
    return [*CONTROL_DEFAULTS, PRESET, VIEW, LOAD_ORDER, INSPECTOR_TOKEN, *model_defaults(), *live_defaults(),
            *TRACE_DEFAULTS, *EP_DEFAULTS, *COMPARE_DEFAULTS,
            *(placement_key(p, name) for p in PLACEMENT_PREFIXES for name in PLACEMENT_WIDGETS)]


def init() -> None:
    """Once per run, before any widget: the first run reads the link; later runs keep undrawn widgets' values."""
    ss = st.session_state
    if ss.get(INITIALISED):
        for key in kept_widgets():
            if key in ss:
                ss[key] = ss[key]
    else:
        _read_link()
        ss[INITIALISED] = True
    ensure(defaults())


def ensure(values: dict) -> None:
    """Keys not set yet get these values (a view drawn on its own, in a test, calls this for its keys)."""
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def _read_link() -> None:
    """The opening link's controls, Model and Expert parallel keys (bad entries are named in notes, never used)."""
    ss = st.session_state
    query = st.query_params.to_dict()
    compare_values, ss[COMPARE_LINK_NOTES] = sides_from_query(query)  # the Compare page's sides: not controls
    ss.update(compare_values)
    query = {key: value for key, value in query.items() if key not in COMPARE_LINK_KEYS.values()}
    preset, values, problems = from_query(query)
    values, notes = sanitize(values, available_devices())
    for key, value in values.items():
        ss[key] = value
    ss[PRESET] = preset
    ss[LINK_NOTES] = problems + notes
    model_values, model_problems = from_link(query, EXAMPLES)
    for key, value in model_values.items():
        ss[key] = value
    ss[MODEL_LINK_NOTES] = model_problems
    ep_values, ss[EP_LINK_NOTES] = ep_from_query(query)
    for key, value in ep_values.items():
        ss[key] = value


def add_link_note(note: str) -> None:
    st.session_state[LINK_NOTES] = [*st.session_state.get(LINK_NOTES, []), note]
