"""Closed-form cost == fvcore on the built model, exactly; presets match the published MACs and breakdown."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import NUM_RANDOM_CONFIGS, random_configs, resizes
from torch import nn

from mvit_nas import ArchConfig, InputError, build_model, count_cost, preset
from mvit_nas.config import PRESETS
from mvit_nas.cost import ATTENTION, Cost, _sdpa_flop_handle, fvcore_cost

fvcore_nn = pytest.importorskip("fvcore.nn")

RANDOM = random_configs()
RANDOM_IDS = [f"random{i:02d}" for i in range(len(RANDOM))]

PUBLISHED_PARAMS = {"xxs": 1_272_024, "xs": 2_317_848, "s": 5_578_632}
PUBLISHED_GMACS = {"xxs": 0.418, "xs": 1.052, "s": 2.033}
# MOBILEVIT.md, millions of MACs at 256 px, rounded to 0.1M.
PUBLISHED_BREAKDOWN = {
    "xxs": {"conv": 195.2, "linear": 134.0, ATTENTION: 78.2, "batch_norm": 8.0, "layer_norm": 2.8},
    "xs": {"conv": 607.4, "linear": 301.2, ATTENTION: 117.3, "batch_norm": 22.1, "layer_norm": 4.2},
    "s": {"conv": 1092.4, "linear": 730.8, ATTENTION: 177.6, "batch_norm": 26.1, "layer_norm": 6.4},
}


def _assert_same(closed: Cost, traced: Cost) -> None:
    assert closed.params == traced.params
    assert closed.flops_by_operator == traced.flops_by_operator
    assert closed.flops == traced.flops == sum(traced.flops_by_operator.values())
    assert closed == traced  # params, flops, height, width, batch size
    assert all(isinstance(value, int) for value in (closed.params, closed.flops, *closed.flops_by_operator.values()))


@functools.cache
def _fvcore(cfg: ArchConfig, height: int | None = None, width: int | None = None, batch_size: int = 1) -> Cost:
    return fvcore_cost(cfg, height, width, batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Closed form == fvcore on random configs
# ---------------------------------------------------------------------------------------------------------------


def test_random_configs_are_varied() -> None:
    """The generator covers what the agreement test is meant to cover."""
    assert len(set(RANDOM)) == NUM_RANDOM_CONFIGS >= 50
    assert sum(resizes(cfg, cfg.resolution, cfg.resolution) for cfg in RANDOM) >= 20
    assert sum(not resizes(cfg, cfg.resolution, cfg.resolution) for cfg in RANDOM) >= 3
    assert {cfg.resolution % 2 for cfg in RANDOM} == {0, 1}
    assert min(cfg.resolution for cfg in RANDOM) == 32
    assert len({stage.num_heads for cfg in RANDOM for stage in cfg.vit_stages}) >= 3
    assert any(stage.ffn_dim == stage.transformer_channels for cfg in RANDOM for stage in cfg.vit_stages)
    assert len({cfg.num_classes for cfg in RANDOM}) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("cfg", RANDOM, ids=RANDOM_IDS)
def test_closed_form_equals_fvcore_random(cfg: ArchConfig) -> None:
    _assert_same(count_cost(cfg), _fvcore(cfg))


# (config index, batch, height, width): non-square, odd, below the config's resolution, batched.
EXTRA_SIZES = [
    (0, 2, 45, 77),
    (1, 3, 32, 32),
    (2, 1, 77, 45),
    (3, 2, 32, 47),
    (4, 1, 64, 33),
    (5, 2, 101, 64),
    (6, 1, 33, 33),
    (7, 3, 48, 40),
    (8, 1, 96, 160),
    (9, 2, 57, 32),
    (10, 1, 160, 96),
    (11, 1, 39, 123),
]


@pytest.mark.slow
@pytest.mark.parametrize(("index", "batch", "height", "width"), EXTRA_SIZES, ids=[f"{e}" for e in EXTRA_SIZES])
def test_closed_form_equals_fvcore_other_sizes(index: int, batch: int, height: int, width: int) -> None:
    cfg = RANDOM[index]
    closed = count_cost(cfg, height, width, batch)
    assert (closed.height, closed.width, closed.batch_size) == (height, width, batch)
    _assert_same(closed, _fvcore(cfg, height, width, batch))


def test_closed_form_equals_fvcore_with_capped_final_conv() -> None:
    """A wide layer5 hits the 960 cap of the final 1x1 expansion."""
    base = RANDOM[0]
    cfg = dataclasses.replace(base, layer5=dataclasses.replace(base.layer5, out_channels=300), last_layer_exp_factor=4)
    assert cfg.final_channels == 960
    _assert_same(count_cost(cfg, 32, 40), _fvcore(cfg, 32, 40))


@pytest.mark.parametrize("cfg", RANDOM, ids=RANDOM_IDS)
def test_closed_form_params_equal_built_model(cfg: ArchConfig) -> None:
    assert count_cost(cfg).params == sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("cfg", RANDOM[:20], ids=RANDOM_IDS[:20])
def test_closed_form_properties(cfg: ArchConfig) -> None:
    one = count_cost(cfg)
    assert one == count_cost(cfg, cfg.resolution, cfg.resolution, 1)
    three = count_cost(cfg, batch_size=3)
    assert three.flops == 3 * one.flops and three.params == one.params
    assert three.flops_by_operator == {op: 3 * value for op, value in one.flops_by_operator.items()}
    big = count_cost(cfg, cfg.resolution + 64)
    assert big.flops > one.flops and big.params == one.params
    assert count_cost(cfg, 64, 96).flops_by_operator == count_cost(cfg, 64, 96).flops_by_operator
    assert (count_cost(cfg, 64, 96).flops_by_operator.get("upsample_bilinear2d", 0) > 0) == resizes(cfg, 64, 96)


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", PRESETS)
def test_preset_closed_form_equals_fvcore(variant: str) -> None:
    _assert_same(count_cost(preset(variant)), _fvcore(preset(variant)))


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "batch", "height", "width"), [("xxs", 1, 224, 224), ("xs", 2, 160, 256)])
def test_preset_closed_form_equals_fvcore_resized(variant: str, batch: int, height: int, width: int) -> None:
    cfg = preset(variant)
    assert resizes(cfg, height, width)
    _assert_same(count_cost(cfg, height, width, batch), _fvcore(cfg, height, width, batch))


@pytest.mark.parametrize("variant", PRESETS)
def test_preset_matches_published_cost(variant: str) -> None:
    cost = count_cost(preset(variant))
    assert cost.params == PUBLISHED_PARAMS[variant]
    assert math.isclose(cost.flops, PUBLISHED_GMACS[variant] * 1e9, rel_tol=0.005)
    # The model applies each MobileViT block's 1x1 conv C->d as a matmul over channels-last pixels,
    # so fvcore (and the closed form) count those MACs as linear, where the published table has conv.
    conv_1x1 = 0
    for stage, size in zip(preset(variant).vit_stages, (32, 16, 8), strict=True):
        conv_1x1 += size * size * stage.out_channels * stage.transformer_channels
    moved = {"conv": -conv_1x1, "linear": conv_1x1}
    for op, expected in PUBLISHED_BREAKDOWN[variant].items():
        assert round((cost.flops_by_operator[op] - moved.get(op, 0)) / 1e6, 1) == expected, op
    # Only global pooling remains: no map is resized at 256 px.
    assert set(cost.flops_by_operator) == {*PUBLISHED_BREAKDOWN[variant], "adaptive_avg_pool2d"}


def test_xxs_attention_term_by_hand() -> None:
    """Per block: 2 (QK^T, AV) x sequences (batch x ph x pw) x patches^2 x dim; xxs at 64 px has maps 8, 4, 2."""
    expected = sum(
        2 * (1 * 2 * 2) * (side // 2) ** 4 * dim * depth for side, dim, depth in ((8, 64, 2), (4, 80, 4), (2, 96, 3))
    )
    assert expected == 305_408
    assert count_cost(preset("xxs"), 64).flops_by_operator[ATTENTION] == expected
    assert _fvcore(preset("xxs"), 64).flops_by_operator[ATTENTION] == expected


# ---------------------------------------------------------------------------------------------------------------
# The attention handler
# ---------------------------------------------------------------------------------------------------------------


class _SDPA(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_handler_counts_qk_and_av() -> None:
    """q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev): L*S*E for QK^T plus L*S*Ev for AV, per batch and head."""
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 6)
    analysis = fvcore_nn.FlopCountAnalysis(_SDPA(), (q, k, v))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_handle)
    assert analysis.total() == 2 * 3 * 5 * 7 * (8 + 6)
    assert analysis.by_operator() == {ATTENTION: 2 * 3 * 5 * 7 * (8 + 6)}


def test_fvcore_without_handler_loses_exactly_attention() -> None:
    """The model calls fused SDPA; without the handler fvcore misses exactly the attention term."""
    cfg = RANDOM[3]
    model = build_model(cfg).eval()
    x = torch.zeros(2, 3, 48, 56)
    closed = count_cost(cfg, 48, 56, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = fvcore_nn.FlopCountAnalysis(model, x)
        bare.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad():
            without = bare.total()
            assert "aten::scaled_dot_product_attention" in bare.unsupported_ops()
    with_handler = _fvcore(cfg, 48, 56, 2)
    attention = closed.flops_by_operator[ATTENTION]
    assert attention > 0
    assert with_handler.flops_by_operator[ATTENTION] == attention
    assert without == with_handler.flops - attention == closed.flops - attention


# ---------------------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------------------

BAD_ARGS: list[tuple[dict[str, Any], str]] = [
    ({"height": 31}, "height"),
    ({"height": 0}, "height"),
    ({"height": -64}, "height"),
    ({"height": True}, "height"),
    ({"height": 64.0}, "height"),
    ({"height": "64"}, "height"),
    ({"height": 64, "width": 31}, "width"),
    ({"height": 64, "width": -1}, "width"),
    ({"height": 64, "width": False}, "width"),
    ({"height": 64, "width": 64.5}, "width"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -2}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"batch_size": 1.0}, "batch_size"),
    ({"batch_size": "2"}, "batch_size"),
    ({"batch_size": None}, "batch_size"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_ARGS, ids=[f"{k}" for k, _ in BAD_ARGS])
def test_count_cost_rejects_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as info:
        count_cost(preset("xxs"), **kwargs)
    assert info.value.field == field


def test_count_cost_accepts_smallest_input() -> None:
    cost = count_cost(preset("s"), 32, 32, 1)
    assert cost.flops > 0 and cost.params == PUBLISHED_PARAMS["s"]
