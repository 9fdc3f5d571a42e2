"""Parameters and multiply-adds of an :class:`ArchConfig`, in closed form.

The closed form is what the search uses (microseconds per config, no model is
built). It follows fvcore's conventions exactly, so :func:`fvcore_cost` on the
built model gives the same integers: one "flop" per multiply-add for conv and
linear layers and for attention (QK^T and AV); BatchNorm in eval mode 2 per
element, LayerNorm 5 per element, bilinear resize 4 per output element, global
average pooling 1 per input element; activations, additions and softmax free.

Example:

>>> cost = count_cost(preset("xs"))
>>> cost.params, cost.flops
(2317848, 1052192768)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mvit_nas.config import (
    MIN_RESOLUTION,
    ArchConfig,
    Block,
    MV2Block,
    StemBlock,
    ViTBlock,
    conv_out,
    layout,
)
from mvit_nas.validate import check_int

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
    depthwise_flops: int = field(default=0, compare=False)  # the part of "conv" in depthwise (grouped) convs


class _Counter:
    """Accumulates params and per-operator MACs while walking the architecture."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.params = 0
        self.flops: Counter[str] = Counter()
        self.depthwise = 0

    def conv_bn(self, in_ch: int, out_ch: int, kernel: int, out_hw: tuple[int, int], groups: int = 1) -> None:
        self.conv(in_ch, out_ch, kernel, out_hw, groups)
        self.params += 2 * out_ch
        self.flops[BATCH_NORM] += 2 * self.batch_size * out_ch * out_hw[0] * out_hw[1]

    def conv(self, in_ch: int, out_ch: int, kernel: int, out_hw: tuple[int, int], groups: int = 1) -> None:
        self.params += out_ch * (in_ch // groups) * kernel * kernel
        macs = self.batch_size * out_hw[0] * out_hw[1] * out_ch * (in_ch // groups) * kernel * kernel
        self.flops[CONV] += macs
        if groups > 1:
            self.depthwise += macs

    def linear(self, tokens: int, in_features: int, out_features: int, bias: bool = True) -> None:
        self.params += in_features * out_features + (out_features if bias else 0)
        self.flops[LINEAR] += tokens * in_features * out_features

    def layer_norm(self, tokens: int, dim: int) -> None:
        self.params += 2 * dim
        self.flops[LAYER_NORM] += 5 * tokens * dim


def _count_block(c: _Counter, block: Block) -> None:
    """Add one block of the layout to the counter (the same modules :func:`~mvit_nas.model.block_module` builds)."""
    in_hw = (block.height, block.width)
    if isinstance(block, StemBlock):
        c.conv_bn(3, block.out_channels, 3, (conv_out(block.height, 2), conv_out(block.width, 2)))
    elif isinstance(block, MV2Block):
        hidden = block.hidden_channels
        c.conv_bn(block.in_channels, hidden, 1, in_hw)
        c.conv_bn(hidden, hidden, 3, block.out_size, groups=hidden)
        c.conv_bn(hidden, block.out_channels, 1, block.out_size)
    elif isinstance(block, ViTBlock):
        _count_vit(c, block)
    else:
        c.conv_bn(block.in_channels, block.final_channels, 1, in_hw)
        c.flops[POOL] += c.batch_size * block.final_channels * block.height * block.width
        c.linear(c.batch_size, block.final_channels, block.num_classes)


def _count_vit(c: _Counter, block: ViTBlock) -> None:
    height, width, channels, dim = block.height, block.width, block.channels, block.dim
    hw = (height, width)
    c.conv_bn(channels, channels, 3, hw)
    c.linear(c.batch_size * height * width, channels, dim, bias=False)  # conv_1x1, run as a matmul over pixels
    new_h = math.ceil(height / block.patch_h) * block.patch_h
    new_w = math.ceil(width / block.patch_w) * block.patch_w
    if (new_h, new_w) != (height, width):
        c.flops[UPSAMPLE] += 4 * c.batch_size * dim * (new_h * new_w + height * width)
    sequences = c.batch_size * block.patch_h * block.patch_w
    patches = (new_h // block.patch_h) * (new_w // block.patch_w)
    tokens = sequences * patches
    for _ in range(block.layers):
        c.layer_norm(tokens, dim)
        c.linear(tokens, dim, 3 * dim)
        c.flops[ATTENTION] += 2 * sequences * patches * patches * dim  # QK^T and AV over all heads
        c.linear(tokens, dim, dim)
        c.layer_norm(tokens, dim)
        c.linear(tokens, dim, block.ffn_dim)
        c.linear(tokens, block.ffn_dim, dim)
    c.layer_norm(tokens, dim)
    c.conv_bn(dim, channels, 1, hw)
    c.conv_bn(2 * channels, channels, 3, hw)


def _total(c: _Counter, height: int, width: int) -> Cost:
    return Cost(
        params=c.params,
        flops=sum(c.flops.values()),
        height=height,
        width=width,
        batch_size=c.batch_size,
        flops_by_operator=dict(c.flops),
        depthwise_flops=c.depthwise,
    )


def block_cost(block: Block, batch_size: int = 1) -> Cost:
    """Params and MACs of one block of :func:`~mvit_nas.config.layout` (``height``/``width``: its input size).

    >>> block_cost(layout(preset("xxs")).stem).flops_by_operator["conv"]  # 16 x 128 x 128 x 27
    7077888
    """
    c = _Counter(batch_size)
    _count_block(c, block)
    return _total(c, block.height, block.width)


def count_cost(cfg: ArchConfig, height: int | None = None, width: int | None = None, batch_size: int = 1) -> Cost:
    """Closed-form params and MACs of ``build_model(cfg)`` on a (batch, 3, H, W) input.

    ``height`` and ``width`` default to ``cfg.resolution``.

    >>> count_cost(preset("xs")).params
    2317848
    """
    height = cfg.resolution if height is None else height
    width = height if width is None else width
    check_int("height", height, MIN_RESOLUTION)
    check_int("width", width, MIN_RESOLUTION)
    check_int("batch_size", batch_size, 1)
    c = _Counter(batch_size)
    for block in layout(cfg, height, width).blocks():
        _count_block(c, block)
    return _total(c, height, width)


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
