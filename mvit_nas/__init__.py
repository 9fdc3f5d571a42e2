"""mvit-nas: hardware-aware architecture search for MobileViT.

Example::

    from mvit_nas import preset, build_model, profile
    report = profile(preset("xxs"))
    print(report.params, report.flops, report.latency.median_ms)
"""

from mvit_nas.config import ArchConfig, MobileViTStageConfig, MV2StageConfig, load_config, preset
from mvit_nas.cost import count_cost
from mvit_nas.errors import InputError
from mvit_nas.model import build_model, from_timm, to_timm

__all__ = [
    "ArchConfig",
    "InputError",
    "MV2StageConfig",
    "MobileViTStageConfig",
    "build_model",
    "count_cost",
    "from_timm",
    "load_config",
    "preset",
    "to_timm",
]
