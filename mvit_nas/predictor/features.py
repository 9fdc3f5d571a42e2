"""What the predictor knows about one block: the blocks of a config, their JSON form, and their cost features.

A network is a chain of blocks (:func:`~mvit_nas.config.layout`): the stem, each
MobileNetV2 block, each MobileViT block (local convs, unfold, ``L`` transformer
layers, fold, fusion), and the final 1x1 conv with the classifier head. Each
block's latency depends only on its record (kind and shape), so the layout's
typed records (:class:`~mvit_nas.config.StemBlock`, ``MV2Block``, ``ViTBlock``,
``HeadBlock``) are the predictor's block shapes.

The features of a block are closed-form costs: multiply-adds per operator family
as :func:`~mvit_nas.cost.block_cost` counts them, plus what it does not count
(elements moved, softmax scores, a per-call and per-layer constant).

Example:

>>> [block.kind for block in decompose(preset("xxs"))][:7]
['stem', 'mv2', 'mv2', 'mv2', 'mv2', 'mv2', 'mobilevit']
>>> block_to_dict(decompose(preset("xxs"))[0])
{'kind': 'stem', 'out_channels': 16, 'height': 256, 'width': 256}
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

from mvit_nas.config import BLOCK_TYPES, ArchConfig, Block, HeadBlock, MV2Block, StemBlock, ViTBlock, conv_out, layout
from mvit_nas.cost import ATTENTION, CONV, LINEAR, block_cost
from mvit_nas.latency import IMAGE_CHANNELS
from mvit_nas.validate import InputError, check_choice, check_int

KINDS = tuple(BLOCK_TYPES)  # stem, mv2, mobilevit, head
BlockShape = Block  # a block as the predictor sees it: the layout's record (kind and shape)

# Units: millions of multiply-adds / elements, so coefficients read as ms per M.
# Multiply-adds come from cost.block_cost's operator families; the MobileViT block's
# conv_1x1 into the transformer runs as a matmul over pixels, so it is in matmul_macs.
FEATURES: dict[str, tuple[str, ...]] = {
    "stem": ("calls", "conv_macs", "elements"),
    "mv2": ("calls", "pointwise_macs", "depthwise_macs", "elements"),
    "mobilevit": (
        "calls",
        "layers",
        "conv_macs",
        "matmul_macs",
        "attention_macs",
        "attention_scores",
        "token_elements",
        "ffn_elements",
        "map_elements",
        "resize_elements",
    ),
    "head": ("calls", "conv_macs", "elements", "linear_macs"),
}
_M = 1e-6


def decompose(cfg: ArchConfig, height: int | None = None, width: int | None = None) -> list[Block]:
    """The blocks ``build_model(cfg)`` runs, in order, on a (3, height, width) input (default ``cfg.resolution``).

    >>> [block.kind for block in decompose(preset("xxs"))][-3:]
    ['mv2', 'mobilevit', 'head']
    """
    return layout(cfg, height, width).blocks()


def block_to_dict(block: Block) -> dict[str, Any]:
    """``{"kind": ..., <shape fields>}``: a block as a latency table stores it."""
    return {"kind": block.kind, **dataclasses.asdict(block)}


def block_from_dict(data: dict[str, Any]) -> Block:
    """The block :func:`block_to_dict` wrote (other keys, such as a measured ``ms``, are ignored).

    >>> block = decompose(preset("xs"))[1]
    >>> block_from_dict({**block_to_dict(block), "ms": 0.5}) == block
    True
    """
    block_type = BLOCK_TYPES[check_choice("kind", data.get("kind"), KINDS)]
    fields = {}
    for field in dataclasses.fields(block_type):
        if field.name not in data:
            raise InputError(field.name, f"is required in a {data['kind']!r} block")
        fields[field.name] = check_int(field.name, data[field.name], 1)
    return block_type(**fields)


def block_input_shape(block: Block) -> tuple[int, int, int]:
    """(channels, height, width) of the input ``block`` takes: an image for the stem, a feature map otherwise."""
    if isinstance(block, StemBlock):
        channels = IMAGE_CHANNELS
    elif isinstance(block, ViTBlock):
        channels = block.channels
    else:
        channels = block.in_channels
    return channels, block.height, block.width


# --- features --------------------------------------------------------------------------


def _stem_features(block: StemBlock, batch: int, macs: dict[str, int], depthwise: int) -> list[float]:
    height, width = block.height, block.width
    out_pixels = conv_out(height, 2) * conv_out(width, 2)
    elements = IMAGE_CHANNELS * height * width + block.out_channels * out_pixels
    return [1.0, macs[CONV] * _M, batch * elements * _M]


def _mv2_features(block: MV2Block, batch: int, macs: dict[str, int], depthwise: int) -> list[float]:
    cin, cout, hidden = block.in_channels, block.out_channels, block.hidden_channels
    in_pixels, (oh, ow) = block.height * block.width, block.out_size
    elements = cin * in_pixels + hidden * in_pixels + hidden * oh * ow + cout * oh * ow
    if block.stride == 1 and cin == cout:
        elements += cout * oh * ow  # the residual add reads and writes once more
    return [1.0, (macs[CONV] - depthwise) * _M, depthwise * _M, batch * elements * _M]


def _vit_features(block: ViTBlock, batch: int, macs: dict[str, int], depthwise: int) -> list[float]:
    channels, dim, layers = block.channels, block.dim, block.layers
    height, width, patch_h, patch_w = block.height, block.width, block.patch_h, block.patch_w
    new_h, new_w = math.ceil(height / patch_h) * patch_h, math.ceil(width / patch_w) * patch_w
    pixels = height * width
    sequences = batch * patch_h * patch_w
    patches = (new_h // patch_h) * (new_w // patch_w)
    tokens = sequences * patches
    scores = layers * sequences * block.num_heads * patches * patches
    # Unfold/fold copies, concatenation and the conv activations, all at map resolution.
    map_elements = batch * (pixels * (4 * channels + 2 * dim) + 2 * new_h * new_w * dim)
    resize = batch * dim * (new_h * new_w + pixels) if (new_h, new_w) != (height, width) else 0
    return [
        1.0,
        float(layers),
        macs[CONV] * _M,
        macs[LINEAR] * _M,
        macs[ATTENTION] * _M,
        scores * _M,
        layers * tokens * dim * _M,
        layers * tokens * block.ffn_dim * _M,
        map_elements * _M,
        resize * _M,
    ]


def _head_features(block: HeadBlock, batch: int, macs: dict[str, int], depthwise: int) -> list[float]:
    elements = block.height * block.width * (block.in_channels + block.final_channels)
    return [1.0, macs[CONV] * _M, batch * elements * _M, macs[LINEAR] * _M]


_FEATURE_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "stem": _stem_features,
    "mv2": _mv2_features,
    "mobilevit": _vit_features,
    "head": _head_features,
}


@functools.lru_cache(maxsize=65536)
def _features(block: Block, batch_size: int) -> tuple[float, ...]:
    cost = block_cost(block, batch_size)
    macs = {family: cost.flops_by_operator.get(family, 0) for family in (CONV, LINEAR, ATTENTION)}
    return tuple(_FEATURE_FUNCTIONS[block.kind](block, batch_size, macs, cost.depthwise_flops))


def block_features(block: Block, batch_size: int = 1) -> list[float]:
    """Closed-form cost features of ``block`` (names in :data:`FEATURES`), for a batch of ``batch_size``.

    >>> stem = decompose(preset("xxs"))[0]
    >>> dict(zip(FEATURES["stem"], (round(value, 6) for value in block_features(stem))))
    {'calls': 1.0, 'conv_macs': 7.077888, 'elements': 0.458752}
    """
    return list(_features(block, batch_size))
