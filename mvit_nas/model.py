"""``build_model(cfg)``: an :class:`ArchConfig` becomes a MobileViT ``nn.Module``.

Module names follow timm's ``mobilevit_*`` (``stem``, ``stages.{i}.{j}``,
``final_conv``, ``head.fc``), so timm's published weights load unchanged and
:func:`from_timm` / :func:`to_timm` are key-for-key identities that only check
the layout.

Example:

>>> model = build_model(preset("xxs")).eval()
>>> model(torch.randn(1, 3, 256, 256)).shape
torch.Size([1, 1000])
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mvit_nas.config import (
    STRIDES,
    ArchConfig,
    Block,
    MV2Block,
    StemBlock,
    ViTBlock,
    layout,
)
from mvit_nas.validate import InputError


class ConvNormAct(nn.Sequential):
    """Bias-free conv -> BatchNorm -> optional SiLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        padding = ((stride - 1) + (kernel_size - 1)) // 2  # timm's symmetric "same" padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU() if act else nn.Identity()


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (strided), linear 1x1 project."""

    def __init__(self, block: MV2Block) -> None:
        super().__init__()
        hidden = block.hidden_channels
        self.conv1_1x1 = ConvNormAct(block.in_channels, hidden, 1)
        self.conv2_kxk = ConvNormAct(hidden, hidden, 3, block.stride, groups=hidden)
        self.conv3_1x1 = ConvNormAct(hidden, block.out_channels, 1, act=False)
        self.has_residual = block.stride == 1 and block.in_channels == block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))
        return out + x if self.has_residual else out


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (fused SDPA kernel)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # (batch, 3 * heads, tokens, head_dim), split along the heads: one transpose that moves whole
        # head vectors and one Split, where unbinding a 5-D permute costs ONNX Runtime a slow
        # element-wise transpose and three Squeezes.
        qkv = self.qkv(x).reshape(batch, tokens, 3 * self.num_heads, dim // self.num_heads).transpose(1, 2)
        q, k, v = qkv.split(self.num_heads, dim=1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, ffn_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    """Local 3x3 conv, global attention over unfolded patches, fusion with the input."""

    def __init__(self, block: ViTBlock, dropout: float) -> None:
        super().__init__()
        channels, dim = block.channels, block.dim
        self.patch_h, self.patch_w = block.patch_h, block.patch_w
        self.conv_kxk = ConvNormAct(channels, channels, 3)
        self.conv_1x1 = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[TransformerLayer(dim, block.ffn_dim, block.num_heads, dropout) for _ in range(block.layers)]
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = ConvNormAct(dim, channels, 1)
        self.conv_fusion = ConvNormAct(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        # Unfold and fold work on channels-last maps, so that every transpose moves whole pixel
        # vectors (dim floats at a time): the channels-first 6-D transpose of the reference is
        # element-wise and cost ONNX Runtime about 5% of an XXS inference. conv_1x1 is therefore
        # applied as a matmul over channels (same weights, same result); it stays a Conv2d for
        # timm's state dict layout.
        x = F.linear(self.conv_kxk(x).permute(0, 2, 3, 1), self.conv_1x1.weight.flatten(1))
        batch, height, width, dim = x.shape
        patch_h, patch_w = self.patch_h, self.patch_w
        # Attention needs whole patches: resize up to the next multiple, and back afterwards.
        new_h, new_w = math.ceil(height / patch_h) * patch_h, math.ceil(width / patch_w) * patch_w
        resized = (new_h, new_w) != (height, width)
        if resized:
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(new_h, new_w), mode="bilinear", align_corners=False)
            x = x.permute(0, 2, 3, 1)
        rows, cols = new_h // patch_h, new_w // patch_w
        # Unfold: each of the patch_h*patch_w pixel positions attends over the rows*cols patches.
        x = x.reshape(batch, rows, patch_h, cols, patch_w, dim).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(batch * patch_h * patch_w, rows * cols, dim)
        x = self.norm(self.transformer(x))
        # Fold back to (batch, dim, height, width).
        x = x.reshape(batch, patch_h, patch_w, rows, cols, dim).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(batch, new_h, new_w, dim).permute(0, 3, 1, 2)
        if resized:
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        x = self.conv_proj(x)
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))


class ClassifierHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.global_pool(x).flatten(1)))


class MobileViT(nn.Module):
    """MobileViT v1 for any :class:`ArchConfig`; input (B, 3, H, W), any H, W >= 32."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        net = layout(cfg)
        self.stem = block_module(net.stem)
        dropout = cfg.transformer_dropout
        self.stages = nn.Sequential(
            *[nn.Sequential(*[block_module(block, dropout) for block in stage]) for stage in net.stages.values()]
        )
        self.final_conv = ConvNormAct(net.head.in_channels, net.head.final_channels, 1)
        self.head = ClassifierHead(net.head.final_channels, net.head.num_classes, cfg.classifier_dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def block_module(block: Block, dropout: float = 0.0) -> nn.Module:
    """The ``nn.Module`` that computes one block of :func:`~mvit_nas.config.layout` (dropout for transformers).

    >>> block_module(layout(preset("xxs")).stages["layer2"][0]).conv2_kxk[0].stride
    (2, 2)
    """
    if isinstance(block, StemBlock):
        return ConvNormAct(3, block.out_channels, 3, stride=STRIDES["stem"])
    if isinstance(block, MV2Block):
        return InvertedResidual(block)
    if isinstance(block, ViTBlock):
        return MobileViTBlock(block, dropout)
    # The head as one module (final conv, pooling, classifier), as the latency predictor times it.
    return nn.Sequential(
        ConvNormAct(block.in_channels, block.final_channels, 1),
        ClassifierHead(block.final_channels, block.num_classes, dropout=0.0),
    )


def build_model(cfg: ArchConfig) -> MobileViT:
    """Build the MobileViT that ``cfg`` describes (weights freshly initialised).

    >>> sum(p.numel() for p in build_model(preset("s")).parameters())
    5578632
    """
    return MobileViT(cfg)


def _check_layout(state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None) -> None:
    if reference is None:
        return
    missing = sorted(set(reference) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(reference))
    if missing or unexpected:
        raise InputError("state_dict", f"layout differs: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in reference.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise InputError(
                f"state_dict[{key!r}]", f"shape {tuple(state_dict[key].shape)} != expected {tuple(tensor.shape)}"
            )


def from_timm(
    state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """timm ``mobilevit_*`` state dict -> one :func:`build_model` accepts.

    The layouts are the same by construction, so this copies the mapping (dropping
    a ``module.`` prefix left by DataParallel) and, given ``reference`` (e.g.
    ``build_model(cfg).state_dict()``), checks keys and shapes.
    """
    converted = {key.removeprefix("module."): value for key, value in state_dict.items()}
    _check_layout(converted, reference)
    return converted


def to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> timm's ``mobilevit_*`` layout (the same keys)."""
    return dict(state_dict)
