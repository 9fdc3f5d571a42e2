"""The one home of what several test modules share: tiny spaces and settings, random configs.

A plain module, not a conftest: ``tests/reliability`` has a conftest of its own, so
``import conftest`` would be ambiguous.
"""

from __future__ import annotations

import random
from typing import Any

from mvit_nas.config import ArchConfig, stage_sizes
from mvit_nas.latency import LatencySpec
from mvit_nas.proxy import ProxySpec
from mvit_nas.settings import SearchSettings
from mvit_nas.space import random_config

__all__ = [
    "FAST_LATENCY",
    "FAST_PROXY",
    "NUM_RANDOM_CONFIGS",
    "PREDICTOR_SPACE",
    "RANDOM_SEED",
    "TINY_SPACE",
    "random_config",
    "random_configs",
    "resizes",
    "tiny_settings",
]

RANDOM_SEED = 20240611
NUM_RANDOM_CONFIGS = 50


def random_configs(count: int = NUM_RANDOM_CONFIGS, seed: int = RANDOM_SEED) -> list[ArchConfig]:
    """``count`` configs from one seeded generator (the same list on every run)."""
    rng = random.Random(seed)
    return [random_config(rng) for _ in range(count)]


def resizes(cfg: ArchConfig, height: int, width: int) -> bool:
    """Whether some MobileViT block of ``cfg`` resizes its map at a ``height`` x ``width`` input."""
    maps = stage_sizes(height, width)[3:]
    return any(h % s.patch_h or w % s.patch_w for s, (h, w) in zip(cfg.vit_stages, maps, strict=True))


# A 16-point space of tiny models at 64 px: a trial takes about a second.
TINY_SPACE: dict[str, Any] = {
    "name": "tiny",
    "resolution": [64],
    "stem_channels": [8],
    "last_layer_exp_factor": [2],
    "classifier_dropout": 0.0,
    "transformer_dropout": 0.0,
    "layer1": {"out_channels": [8], "mv2_exp": [2], "num_blocks": [1]},
    "layer2": {"out_channels": [8, 16], "mv2_exp": [2], "num_blocks": [1]},
    "layer3": {
        "out_channels": [16],
        "mv2_exp": [2],
        "transformer_channels": [16, 32],
        "ffn_ratio": [1, 2],
        "transformer_blocks": [1],
        "num_heads": [2],
        "patch_h": [2],
        "patch_w": [2],
    },
    "layer4": {
        "out_channels": [16],
        "mv2_exp": [2],
        "transformer_channels": [16],
        "ffn_ratio": [1],
        "transformer_blocks": [1],
        "num_heads": [2],
        "patch_h": [2],
        "patch_w": [2],
    },
    "layer5": {
        "out_channels": [16, 24],
        "mv2_exp": [2],
        "transformer_channels": [16],
        "ffn_ratio": [1],
        "transformer_blocks": [1],
        "num_heads": [2],
        "patch_h": [1],
        "patch_w": [1],
    },
}
FAST_LATENCY = LatencySpec(backend="eager", threads=1, warmup=1, min_repeats=3, min_seconds=0.0)
# A quarter of the resolution: the 256 px seeds train at 64 px, the tiny space at the 32 px minimum.
FAST_PROXY = ProxySpec(epochs=0.01, batch_size=32, scale=0.25)


def tiny_settings(budget_ms: float = 1000.0, **changes: Any) -> SearchSettings:
    fields = {"space": TINY_SPACE, "latency": FAST_LATENCY, "proxy": FAST_PROXY, **changes}
    return SearchSettings(budget_ms=budget_ms, **fields)


# Two choices per knob, for the latency predictor's sampling and fitting.
PREDICTOR_SPACE = {
    "name": "tiny",
    "resolution": [64, 96],
    "stem_channels": [8, 16],
    "last_layer_exp_factor": [2],
    "classifier_dropout": 0.1,
    "transformer_dropout": 0.1,
    "layer1": {"out_channels": [8, 16], "mv2_exp": [2], "num_blocks": [1]},
    "layer2": {"out_channels": [16, 24], "mv2_exp": [2, 3], "num_blocks": [1, 2]},
    **{
        stage: {
            "out_channels": [16, 32],
            "mv2_exp": [2],
            "transformer_channels": [16, 32],
            "ffn_ratio": [1, 2],
            "transformer_blocks": [1, 2],
            "num_heads": [2],
            "patch_h": [2],
            "patch_w": [2],
        }
        for stage in ("layer3", "layer4", "layer5")
    },
}
