"""``profile(cfg, spec)``: what a model costs — parameters, multiply-adds, latency, memory.

Example::

    from mvit_nas import preset, profile
    report = profile(preset("s"))
    print(report.to_dict()["latency_ms"]["median"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mvit_nas.config import ArchConfig
from mvit_nas.cost import Cost, count_cost
from mvit_nas.latency import LatencySpec, LatencyStats, measure_config


@dataclass(frozen=True)
class ProfileReport:
    config: ArchConfig
    cost: Cost
    latency: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        """The ``mvit-nas profile --json`` object (DESIGN.md contract)."""
        spec = self.latency.spec
        return {
            "params": self.cost.params,
            "flops": self.cost.flops,
            "flops_by_operator": self.cost.flops_by_operator,
            "latency_ms": {
                "median": self.latency.median_ms,
                "p10": self.latency.p10_ms,
                "p90": self.latency.p90_ms,
                "mean": self.latency.mean_ms,
                "n": self.latency.n,
                "discarded": self.latency.discarded,
            },
            "peak_memory_mb": self.latency.peak_memory_mb,
            "device": spec.device,
            "backend": spec.backend,
            "resolution": spec.height if spec.height == spec.width else [spec.height, spec.width],
            "batch_size": spec.batch_size,
            "dtype": spec.dtype,
            "threads": spec.threads,
        }


def profile(cfg: ArchConfig, spec: LatencySpec | None = None) -> ProfileReport:
    """Count the cost of ``cfg`` in closed form and measure its latency under ``spec``.

    ``spec`` defaults to CPU, ONNX Runtime, batch 1 at ``cfg.resolution``; its
    input size wins over ``cfg.resolution``.
    """
    if spec is None:
        spec = LatencySpec(height=cfg.resolution, width=cfg.resolution)
    cfg = dataclasses.replace(cfg, resolution=min(spec.height, spec.width))
    cost = count_cost(cfg, spec.height, spec.width, spec.batch_size)
    return ProfileReport(config=cfg, cost=cost, latency=measure_config(cfg, spec))
