"""The CLI's option table: a MoEConfig and a scenario turned into arguments (`config_argv`, `scenario_argv`) parse
back to the same config and input; the argument types; the domain packages never import the CLI."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import pathlib

import pytest

from moe.cli.args import finite_float, finite_floats, int_in, integer, positive_int
from moe.cli.main import build_parser
from moe.cli.options import CONFIG_OPTIONS, config_argv, resolve, scenario_argv
from moe.config import MoEConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _parse(argv: list[str]):
    return resolve(build_parser().parse_args(["report", *argv]))


# Every field away from its default at least once, biases with negative values (argparse would take "-0.5" for
# an option), floats that do not print short (repr keeps them exact).
CONFIGS = [
    MoEConfig(),
    MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=1, router="expert_choice", score="sigmoid",
              temperature=0.7, normalize_topk=False, routed_scaling_factor=2.5, logit_bias=(-0.5, 0.0, 3.0, 1e-7),
              expert_bias=(0.1, -2.0, 0.0, 0.3), router_dtype="model", capacity_factor=1.25, drop_policy="probs",
              capacity_scope="sequence", jitter_eps=0.01, noise_std=0.2, activation="gelu", gated=False,
              expert_biases=True, swiglu_limit=5.0, shared_experts=2, d_shared=24, shared_gate=True,
              sparsity_eps=0.05, sparsity_mode="relative", dtype="bfloat16", seed=7),
    MoEConfig(n_experts=8, top_k=4, n_group=4, topk_group=2, expert_bias=(1 / 3,) * 8, activation="relu", seed=123),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["defaults", "every-field", "groups"])
def test_config_argv_parses_back_to_the_same_config(cfg):
    assert _parse(config_argv(cfg))[0] == cfg


def test_every_config_field_has_an_option_that_writes_it_back():
    settable = {o.field for o in CONFIG_OPTIONS if o.field}
    assert settable == {f.name for f in dataclasses.fields(MoEConfig)}
    changed = {f for f in settable if getattr(CONFIGS[1], f) != getattr(MoEConfig(), f)}
    assert changed == settable - {"n_group", "topk_group", "device"}  # groups: CONFIGS[2]; device: the machine's


def test_scenario_argv_draws_the_same_input():
    for scenario, params, tokens in [("gaussian", {}, 64), ("clusters", {"n_clusters": 3, "skew": -0.5}, 96),
                                     ("drifting", {"step": 5, "n_clusters": 2, "spread": 0.25, "period": 40}, 32)]:
        _, got_scenario, got_params, got_tokens = _parse(scenario_argv(scenario, params, tokens))
        assert (got_scenario, got_tokens) == (scenario, tokens)
        assert {k: v for k, v in got_params.items() if k in params} == params


def test_scenario_argv_refuses_a_parameter_without_an_option():
    with pytest.raises(ValueError, match="scenario parameter colour has no command-line option"):
        scenario_argv("gaussian", {"colour": 1}, 8)


def test_logit_bias_and_hot_expert_are_one_or_the_other(capsys):
    from moe.cli.main import main

    assert main(["report", "--n-experts", "2", "--logit-bias", "0,1", "--hot-expert", "1"]) == 2
    assert "give it or --hot-expert/--hot-bias, not both" in capsys.readouterr().err
    assert main(["report", "--n-experts", "4", "--logit-bias", "0,1"]) == 2
    assert "logit_bias has 2 values but n_experts=4" in capsys.readouterr().err


@pytest.mark.parametrize("parse, text, value", [
    (positive_int, "3", 3), (integer, "-2", -2), (finite_float, "0.5", 0.5), (int_in(0, 9), "9", 9),
    (finite_floats, "-1,2.5,0", (-1.0, 2.5, 0.0)),
])
def test_argument_types_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text, message", [
    (positive_int, "0", "expected a positive integer, got '0'"),
    (positive_int, "x", "expected a positive integer, got 'x'"),
    (integer, "1.5", "expected an integer, got '1.5'"),
    (finite_float, "nan", "expected a finite number, got 'nan'"),
    (finite_float, "inf", "expected a finite number, got 'inf'"),
    (finite_float, "one", "expected a number, got 'one'"),
    (int_in(1, 10), "11", "expected an integer from 1 to 10, got '11'"),
    (finite_floats, "1,,2", "expected comma-separated numbers"),
    (finite_floats, "1,nan", "expected comma-separated finite numbers"),
])
def test_argument_types_refuse_with_one_line(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _cli_imports(path: pathlib.Path) -> list[str]:
    return sorted(n for n in _imports(path) if n == "moe.cli" or n.startswith("moe.cli."))


def test_the_domain_packages_never_import_the_cli(tmp_path):
    domain = [p for folder in ("traces", "parallel", "hf", "train") for p in (ROOT / "moe" / folder).rglob("*.py")]
    domain += [p for p in (ROOT / "moe").glob("*.py") if p.name != "__main__.py"]
    assert ROOT / "moe" / "parallel" / "launch.py" in domain and ROOT / "moe" / "hf" / "report.py" in domain
    assert {str(p.relative_to(ROOT)): _cli_imports(p) for p in domain if _cli_imports(p)} == {}
    bad = tmp_path / "bad.py"  # the check sees a function-level import too
    bad.write_text("def f():\n    from moe.cli.main import build_parser\n")
    assert _cli_imports(bad) == ["moe.cli.main"]
