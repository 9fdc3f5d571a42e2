"""Parameters and multiply-adds of an :class:`ArchConfig`, in closed form.

The closed form is what the search uses (microseconds per config, no model is
built). It follows fvcore's conventions exactly, so :func:`fvcore_cost` on the
built model gives the same integers: one "flop" per multiply-add for conv and
linear layers and for attention (QK^T and AV); BatchNorm in eval mode 2 per
element, LayerNorm 5 per element, bilinear resize 4 per output element, global
average pooling 1 per input element; activations, additions and softmax free.

Example::

    cost = count_cost(preset("xs"))
    cost.params, cost.flops  # 2_317_848, ~1.05e9
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mvit_nas.config import ArchConfig, MobileViTStageConfig, conv_out, make_divisible
from mvit_nas.errors import InputError

# Operator names as fvcore reports them in ``FlopCountAnalysis.by_operator()``.
CONV, LINEAR, ATTENTION = "conv", "linear", "scaled_dot_product_attention"
BATCH_NORM, LAYER_NORM = "batch_norm", "layer_norm"
UPSAMPLE, POOL = "upsample_bilinear2d", "adaptive_avg_pool2d"


@dataclass(frozen=True)
class Cost:
    """Parameter count and multiply-adds (fvcore convention) at one input size."""

    params: int
    flops: int
    height: int
    width: int
    batch_size: int
    flops_by_operator: dict[str, int] = field(default_factory=dict, compare=False, hash=False)


class _Counter:
    """Accumulates params and per-operator MACs while walking the architecture."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.params = 0
        self.flops: Counter[str] = Counter()

    def conv_bn(self, in_ch: int, out_ch: int, kernel: int, out_hw: tuple[int, int], groups: int = 1) -> None:
        self.conv(in_ch, out_ch, kernel, out_hw, groups)
        self.params += 2 * out_ch
        self.flops[BATCH_NORM] += 2 * self.batch_size * out_ch * out_hw[0] * out_hw[1]

    def conv(self, in_ch: int, out_ch: int, kernel: int, out_hw: tuple[int, int], groups: int = 1) -> None:
        self.params += out_ch * (in_ch // groups) * kernel * kernel
        self.flops[CONV] += self.batch_size * out_hw[0] * out_hw[1] * out_ch * (in_ch // groups) * kernel * kernel

    def linear(self, tokens: int, in_features: int, out_features: int, bias: bool = True) -> None:
        self.params += in_features * out_features + (out_features if bias else 0)
        self.flops[LINEAR] += tokens * in_features * out_features

    def layer_norm(self, tokens: int, dim: int) -> None:
        self.params += 2 * dim
        self.flops[LAYER_NORM] += 5 * tokens * dim


def _inverted_residual(
    c: _Counter, in_ch: int, out_ch: int, expansion: int, out_hw: tuple[int, int], in_hw: tuple[int, int]
) -> None:
    hidden = make_divisible(in_ch * expansion)
    c.conv_bn(in_ch, hidden, 1, in_hw)
    c.conv_bn(hidden, hidden, 3, out_hw, groups=hidden)
    c.conv_bn(hidden, out_ch, 1, out_hw)


def _mobilevit_block(c: _Counter, channels: int, stage: MobileViTStageConfig, hw: tuple[int, int]) -> None:
    height, width = hw
    dim = stage.transformer_channels
    c.conv_bn(channels, channels, 3, hw)
    c.linear(c.batch_size * height * width, channels, dim, bias=False)  # conv_1x1, run as a matmul over pixels
    new_h = math.ceil(height / stage.patch_h) * stage.patch_h
    new_w = math.ceil(width / stage.patch_w) * stage.patch_w
    if (new_h, new_w) != (height, width):
        c.flops[UPSAMPLE] += 4 * c.batch_size * dim * (new_h * new_w + height * width)
    sequences = c.batch_size * stage.patch_h * stage.patch_w
    patches = (new_h // stage.patch_h) * (new_w // stage.patch_w)
    tokens = sequences * patches
    for _ in range(stage.transformer_blocks):
        c.layer_norm(tokens, dim)
        c.linear(tokens, dim, 3 * dim)
        c.flops[ATTENTION] += 2 * sequences * patches * patches * dim  # QK^T and AV over all heads
        c.linear(tokens, dim, dim)
        c.layer_norm(tokens, dim)
        c.linear(tokens, dim, stage.ffn_dim)
        c.linear(tokens, stage.ffn_dim, dim)
    c.layer_norm(tokens, dim)
    c.conv_bn(dim, channels, 1, hw)
    c.conv_bn(2 * channels, channels, 3, hw)


def count_cost(cfg: ArchConfig, height: int | None = None, width: int | None = None, batch_size: int = 1) -> Cost:
    """Closed-form params and MACs of ``build_model(cfg)`` on a (batch, 3, H, W) input.

    ``height`` and ``width`` default to ``cfg.resolution``.
    """
    height = cfg.resolution if height is None else height
    width = height if width is None else width
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 32:
            raise InputError(name, f"must be an integer >= 32, got {value!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    c = _Counter(batch_size)
    hw = (conv_out(height, 2), conv_out(width, 2))
    c.conv_bn(3, cfg.stem_channels, 3, hw)
    channels = cfg.stem_channels
    for stride, stage in ((1, cfg.layer1), (2, cfg.layer2)):
        for index in range(stage.num_blocks):
            in_hw = hw
            if index == 0 and stride == 2:
                hw = (conv_out(hw[0], 2), conv_out(hw[1], 2))
            _inverted_residual(c, channels, stage.out_channels, stage.mv2_exp, hw, in_hw)
            channels = stage.out_channels
    for stage in cfg.vit_stages:
        in_hw, hw = hw, (conv_out(hw[0], 2), conv_out(hw[1], 2))
        _inverted_residual(c, channels, stage.out_channels, stage.mv2_exp, hw, in_hw)
        channels = stage.out_channels
        _mobilevit_block(c, channels, stage, hw)
    c.conv_bn(channels, cfg.final_channels, 1, hw)
    c.flops[POOL] += batch_size * cfg.final_channels * hw[0] * hw[1]
    c.linear(batch_size, cfg.final_channels, cfg.num_classes)
    return Cost(
        params=c.params,
        flops=sum(c.flops.values()),
        height=height,
        width=width,
        batch_size=batch_size,
        flops_by_operator=dict(c.flops),
    )


def _sdpa_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention`` (it has none).

    q: (..., L, E), k: (..., S, E), v: (..., S, Ev): QK^T costs L*S*E, AV L*S*Ev.
    """
    from fvcore.nn.jit_handles import get_shape

    q_shape, k_shape, v_shape = (get_shape(value) for value in inputs[:3])
    batch = math.prod(q_shape[:-2])
    queries, embed = q_shape[-2], q_shape[-1]
    keys, value_dim = k_shape[-2], v_shape[-1]
    return batch * queries * keys * (embed + value_dim)


def fvcore_cost(cfg: ArchConfig, height: int | None = None, width: int | None = None, batch_size: int = 1) -> Cost:
    """Params and MACs of the built model, traced by fvcore (slow: builds and traces)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    from mvit_nas.model import build_model

    height = cfg.resolution if height is None else height
    width = height if width is None else width
    model = build_model(cfg).eval()
    inputs = torch.zeros(batch_size, 3, height, width)
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        by_operator = {name: int(count) for name, count in analysis.by_operator().items() if count}
    return Cost(
        params=sum(p.numel() for p in model.parameters()),
        flops=sum(by_operator.values()),
        height=height,
        width=width,
        batch_size=batch_size,
        flops_by_operator=by_operator,
    )
