"""Test helpers: a seeded generator of small, valid, varied :class:`ArchConfig` records.

``random_config(rng)`` spans the validated range broadly but cheaply: small channel
counts (so an fvcore trace takes a fraction of a second), every MV2 expansion up to
6, one to three blocks, head counts that divide the transformer dim with head dims
from 4 up, ffn_dim from dim to 3x dim, patch sizes 1..4 chosen so that many do
not divide their feature map (exercising the bilinear resize), odd and even
resolutions from 32 to 160, and varied class counts and dropouts.

Example::

    from random_configs import random_config
    cfg = random_config(random.Random(0))
"""

from __future__ import annotations

import random

from mvit_nas.config import ArchConfig, MobileViTStageConfig, MV2StageConfig, stage_sizes

RANDOM_SEED = 20240611
NUM_RANDOM_CONFIGS = 50
# Patch sizes of a stage are drawn only up to the stage's feature map at the
# config's resolution (validation rejects larger ones), and never above this.
MAX_TEST_PATCH = 4


def _channels(rng: random.Random, low: int = 1, high: int = 24) -> int:
    return rng.randint(low, high)


def _mv2_stage(rng: random.Random, max_blocks: int) -> MV2StageConfig:
    return MV2StageConfig(
        out_channels=_channels(rng),
        mv2_exp=rng.randint(1, 6),
        num_blocks=rng.randint(1, max_blocks),
    )


def _vit_stage(rng: random.Random, map_hw: tuple[int, int]) -> MobileViTStageConfig:
    num_heads = rng.choice((1, 1, 2, 3, 4))
    head_dim = rng.choice((4, 4, 5, 6, 8))
    dim = num_heads * head_dim
    return MobileViTStageConfig(
        out_channels=_channels(rng, 2, 32),
        mv2_exp=rng.randint(1, 6),
        transformer_channels=dim,
        ffn_dim=rng.choice((dim, dim + rng.randint(1, 2 * dim), 2 * dim)),
        transformer_blocks=rng.randint(1, 2),
        num_heads=num_heads,
        patch_h=rng.randint(1, min(MAX_TEST_PATCH, map_hw[0])),
        patch_w=rng.randint(1, min(MAX_TEST_PATCH, map_hw[1])),
    )


def random_config(rng: random.Random) -> ArchConfig:
    """A small, valid, random :class:`ArchConfig` drawn from ``rng`` (deterministic per seed)."""
    resolution = rng.choice((32, 33, 47, 64, 65, 96, 111, 128, 131, 160, rng.randint(32, 160)))
    sizes = stage_sizes(resolution, resolution)
    return ArchConfig(
        stem_channels=_channels(rng, 1, 16),
        layer1=_mv2_stage(rng, max_blocks=2),
        layer2=_mv2_stage(rng, max_blocks=3),
        layer3=_vit_stage(rng, sizes[3]),
        layer4=_vit_stage(rng, sizes[4]),
        layer5=_vit_stage(rng, sizes[5]),
        last_layer_exp_factor=rng.randint(1, 6),
        resolution=resolution,
        num_classes=rng.choice((1, 2, 10, 37, 100, 1000)),
        classifier_dropout=rng.choice((0.0, 0.1, round(rng.random() * 0.9, 6), rng.random() * 0.5)),
        transformer_dropout=rng.choice((0.0, 0.05, 0.1, rng.random() * 0.5)),
    )


def random_configs(count: int = NUM_RANDOM_CONFIGS, seed: int = RANDOM_SEED) -> list[ArchConfig]:
    """``count`` configs from one seeded generator (the same list on every run)."""
    rng = random.Random(seed)
    return [random_config(rng) for _ in range(count)]


def resizes(cfg: ArchConfig, height: int, width: int) -> bool:
    """Whether some MobileViT block of ``cfg`` resizes its map at a ``height`` x ``width`` input."""
    maps = stage_sizes(height, width)[3:]
    return any(h % s.patch_h or w % s.patch_w for s, (h, w) in zip(cfg.vit_stages, maps, strict=True))
