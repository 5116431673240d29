"""Bad configs and bad inputs raise ValueError with a message that says what to change."""
from __future__ import annotations

import re

import pytest
import torch

from moe import MoEConfig

OK = dict(d_model=16, d_expert=32, n_experts=4, top_k=2)


def make(**changes) -> MoEConfig:
    return MoEConfig(**{**OK, **changes})


def test_valid_config_is_frozen():
    cfg = make()
    with pytest.raises(Exception):
        cfg.top_k = 3  # frozen dataclass


def test_top_k_above_n_experts():
    with pytest.raises(ValueError, match=r"top_k=5.*n_experts=4"):
        make(top_k=5)


@pytest.mark.parametrize("name", ("d_model", "d_expert", "n_experts", "top_k"))
@pytest.mark.parametrize("value", (0, -3, 2.5, True))
def test_non_positive_sizes(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer.*{re.escape(repr(value))}"):
        make(**{name: value})


@pytest.mark.parametrize("value", (0, 0.0, -1.0, float("nan"), float("inf")))
def test_capacity_factor(value):
    with pytest.raises(ValueError, match=r"capacity_factor must be > 0.*None"):
        make(capacity_factor=value)


@pytest.mark.parametrize("field,value,choice", [
    ("router", "switch", "'expert_choice'"),
    ("score", "relu", "'sigmoid'"),
    ("drop_policy", "random", "'probs'"),
    ("dtype", "float64", "'bfloat16'"),
    ("router_dtype", "float16", "'model'"),
])
def test_unknown_choice_names_value_and_options(field, value, choice):
    with pytest.raises(ValueError) as info:
        make(**{field: value})
    message = str(info.value)
    assert field in message and repr(value) in message and choice in message, message


@pytest.mark.parametrize("device", ("tpu", "gpu", "cuda0"))
def test_unknown_device(device):
    with pytest.raises(ValueError, match=rf"unknown device '{device}'.*'cpu'"):
        make(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("device", ("cuda", "cuda:0", "cuda:3"))
def test_cuda_without_gpu(device):
    with pytest.raises(ValueError, match=rf"'{device}'.*no CUDA GPU.*device='cpu'"):
        make(device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_out_of_range():
    with pytest.raises(ValueError, match=r"cuda:99.*does not exist"):
        make(device="cuda:99")


@pytest.mark.parametrize("name", ("logit_bias", "expert_bias"))
def test_bias_length(name):
    with pytest.raises(ValueError, match=rf"{name} has 3 values but n_experts=4.*one value per expert"):
        make(**{name: (0.0, 1.0, 2.0)})
    with pytest.raises(ValueError, match=rf"{name} values must be finite"):
        make(**{name: (0.0, 1.0, float("nan"), 0.0)})


def test_bias_list_becomes_tuple():
    cfg = make(logit_bias=[0, 1, 2, 3])
    assert cfg.logit_bias == (0.0, 1.0, 2.0, 3.0)
    hash(cfg)  # still hashable, so it can key a cache


@pytest.mark.parametrize("value", (0, -1.0, float("nan"), float("inf")))
def test_temperature(value):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        make(temperature=value)


@pytest.mark.parametrize("field,value,match", [
    ("jitter_eps", -0.1, r"jitter_eps must be in \[0, 1\)"),
    ("jitter_eps", 1.0, r"jitter_eps must be in \[0, 1\)"),
    ("noise_std", -1.0, r"noise_std must be >= 0"),
    ("sparsity_eps", -0.01, r"sparsity_eps must be >= 0"),
    ("seed", -1, r"seed must be a non-negative integer"),
    ("routed_scaling_factor", float("nan"), r"routed_scaling_factor must be finite"),
])
def test_other_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        make(**{field: value})


def test_capacity_helper():
    assert make().capacity(30) is None
    assert make(capacity_factor=1.25).capacity(30) == 19          # ceil(1.25·30·2/4) = ceil(18.75)
    assert make(capacity_factor=10.0).capacity(30) == 30          # at most T
    assert make(router="expert_choice").capacity(30) == 15        # None counts as 1.0


def test_wrong_input_width_names_both_widths():
    from moe import MoELayer
    layer = MoELayer(MoEConfig(d_model=32, d_expert=16, n_experts=4, top_k=2))
    with pytest.raises(ValueError, match=r"(32.*64|64.*32)"):
        layer(torch.randn(5, 64))
    with pytest.raises(ValueError, match=r"(32.*64|64.*32)"):
        layer(torch.randn(2, 3, 64))
