"""The strict JSON writer and the server's file roots."""
import json
import math
import os

import numpy as np
import pytest
import torch

from moe import jsonio, roots


def _strict_parse(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_become_null_at_any_depth():
    doc = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -math.inf}], "d": np.float32("nan"),
           "e": np.array([1.0, np.nan]), "f": torch.tensor([np.inf, 2.0]), "g": np.int64(3), 4: "four"}
    out = _strict_parse(jsonio.dumps(doc))
    assert out == {"a": None, "b": [1.0, None, {"c": None}], "d": None, "e": [1.0, None],
                   "f": [None, 2.0], "g": 3, "4": "four"}


def test_lines_are_each_one_strict_document():
    text = jsonio.dumps_lines([{"x": float("nan")}, {"x": 1.5}])
    assert [_strict_parse(line) for line in text.splitlines()] == [{"x": None}, {"x": 1.5}]
    assert text.endswith("\n")


def test_an_unconvertible_non_finite_value_fails_loudly():
    class Odd:  # neither float nor array: strict leaves it alone and json refuses it
        pass
    with pytest.raises(TypeError):
        jsonio.dumps({"x": Odd()})


def test_paths_open_only_under_the_roots(tmp_path, monkeypatch):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    (inside / "t.jsonl").write_text("{}")
    (outside / "t.jsonl").write_text("{}")
    (inside / "link").symlink_to(outside / "t.jsonl")
    monkeypatch.chdir(inside)
    monkeypatch.delenv(roots.ROOTS_ENV, raising=False)
    monkeypatch.delenv(roots.MODEL_ENV, raising=False)
    assert roots.resolve_allowed(str(inside / "t.jsonl"), "file") == (inside / "t.jsonl").resolve()
    assert roots.resolve_allowed("t.jsonl", "file") == (inside / "t.jsonl").resolve()
    messages = set()
    for bad in [str(outside / "t.jsonl"), str(outside / "missing"), str(inside / "missing"), "link",
                "../out/t.jsonl", "/etc/passwd", "", "a\x00b"]:
        with pytest.raises(roots.OutsideRoots) as err:
            roots.resolve_allowed(bad, "file")
        messages.add(str(err.value))
    assert messages == {roots.OUTSIDE}  # one message: an existing file reads like a missing one
    with pytest.raises(roots.OutsideRoots):
        roots.resolve_allowed(str(inside / "t.jsonl"), "dir")
    monkeypatch.setenv(roots.ROOTS_ENV, os.pathsep.join([str(outside), ""]))
    assert roots.resolve_allowed(str(outside / "t.jsonl"), "file") == (outside / "t.jsonl").resolve()


def test_the_bundled_models_are_a_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(roots.ROOTS_ENV, raising=False)
    assert roots.resolve_allowed(str(roots.MODELS_DIR / "pydoc-mixtral"), "dir").name == "pydoc-mixtral"
