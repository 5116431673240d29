"""Every MoEConfig field is checked from its declared type: nonsense is a ValueError naming the field."""
import dataclasses
import re

import numpy as np
import pytest
import torch

from moe import MoEConfig, MoELayer


@pytest.mark.parametrize("field, value, match", [
    ("capacity_factor", True, r"capacity_factor must be a number, got True \(bool\)"),
    ("temperature", False, r"temperature must be a number"),
    ("d_model", True, r"d_model must be a positive integer, got True"),
    ("normalize_topk", "False", r"normalize_topk must be True or False, got 'False' \(str\)"),
    ("normalize_topk", 0, r"normalize_topk must be True or False"),
    ("logit_bias", "12345678", r"logit_bias must be a sequence .*'12345678'"),
    ("expert_bias", [0.0] * 7 + ["x"], r"expert_bias\[7\] must be a number, got 'x'"),
    ("d_model", "16", r"d_model must be a positive integer, got '16' \(str\)"),
    ("temperature", "1.0", r"temperature must be a number, got '1.0'"),
    ("router", 3, r"router must be a string, got 3"),
    ("seed", 2 ** 64, r"seed must be below 2\*\*64"),
    ("routed_scaling_factor", -1.0, r"routed_scaling_factor must be finite and > 0"),
    ("routed_scaling_factor", 0.0, r"routed_scaling_factor must be finite and > 0"),
    ("routed_scaling_factor", float("inf"), r"routed_scaling_factor must be finite and > 0"),
    ("logit_bias", [0.0] * 7 + [1e308], r"logit_bias values must lie within ±10000"),
])
def test_nonsense_is_refused_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**{field: value})


def test_numpy_numbers_are_accepted_and_coerced():
    cfg = MoEConfig(d_model=np.int64(16), n_experts=np.int32(4), top_k=np.int8(2), temperature=np.float32(0.5),
                    capacity_factor=np.float64(1.5), normalize_topk=np.bool_(False), seed=np.uint64(2 ** 64 - 1),
                    logit_bias=np.array([0.5, 0, 0, 1]))
    assert type(cfg.d_model) is int and cfg.d_model == 16 and type(cfg.top_k) is int
    assert type(cfg.temperature) is float and cfg.temperature == 0.5 and type(cfg.capacity_factor) is float
    assert cfg.normalize_topk is False and cfg.seed == 2 ** 64 - 1
    assert cfg.logit_bias == (0.5, 0.0, 0.0, 1.0)
    assert cfg == MoEConfig(d_model=16, n_experts=4, top_k=2, temperature=0.5, capacity_factor=1.5,
                            normalize_topk=False, seed=2 ** 64 - 1, logit_bias=(0.5, 0, 0, 1))
    hash(cfg)  # still hashable: the cache key of the dashboard


def test_largest_seed_builds_a_layer():
    layer = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=2, top_k=1, seed=2 ** 64 - 1))
    assert torch.isfinite(layer(torch.randn(4, 8))[0]).all()


def test_a_field_added_later_is_checked_from_its_type():
    from moe.validate import check_fields

    @dataclasses.dataclass(frozen=True)
    class Later:
        width: int = 4
        share: float | None = None
        flag: bool = True

        def __post_init__(self):
            check_fields(self)

    assert Later(width=np.int64(3), share=np.float32(0.25)).width == 3
    with pytest.raises(ValueError, match="share must be a number or None|share must be a number"):
        Later(share="0.2")
    with pytest.raises(ValueError, match="flag must be True or False"):
        Later(flag="no")


def test_integer_input_tensor_is_refused():
    layer = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2))
    with pytest.raises(ValueError, match=r"input must be a floating-point tensor, got dtype torch.int64.*x.float\(\)"):
        layer(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(3, 8, dtype=torch.bool))


@pytest.mark.parametrize("value, minimum, ok", [
    (3, 1, True), (np.int64(3), 1, True), (0, 0, True), (-1, -1, True),
    (0, 1, False), (True, 0, False), (np.bool_(True), 0, False), (2.0, 1, False), ("3", 1, False), (None, 0, False),
])
def test_int_at_least_is_the_one_integer_check(value, minimum, ok):
    from moe.validate import int_at_least
    if ok:
        assert int_at_least("n", value, minimum) == int(value) and type(int_at_least("n", value, minimum)) is int
    else:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        with pytest.raises(ValueError, match=re.escape(f"n must be {kind}, got {value!r}")):
            int_at_least("n", value, minimum)


@pytest.mark.parametrize("value, kwargs, message", [
    (0.5, {}, None), (np.float32(0.5), {"positive": True}, None), (0, {"minimum": 0}, None),
    (float("nan"), {}, "x must be a finite number, got nan"), (float("inf"), {"minimum": 0}, "x must be a finite number >= 0"),
    (-0.1, {"minimum": 0}, "x must be a finite number >= 0, got -0.1"), (0.0, {"positive": True}, "x must be a finite number > 0"),
    (True, {}, "x must be a finite number, got True"), ("1", {}, "x must be a finite number, got '1'"),
    (10 ** 400, {}, "x must be a finite number, got 1000"),  # too large for a float: not an OverflowError
])
def test_finite_number_is_the_one_number_check(value, kwargs, message):
    from moe.validate import finite_number
    if message is None:
        assert finite_number("x", value, **kwargs) == float(value)
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            finite_number("x", value, **kwargs)
