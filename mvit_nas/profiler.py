"""``profile(cfg, spec)``: what a model costs — parameters, multiply-adds, latency, memory.

Example (eager PyTorch at 64 px, timed briefly, to keep it quick):

>>> spec = LatencySpec(backend="eager", height=64, width=64, warmup=1, min_repeats=3, min_seconds=0.0)
>>> report = profile(preset("xxs"), spec)
>>> report.cost.params, report.to_dict()["latency_ms"]["n"] >= 3
(1272024, True)
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
    """What a model costs: closed-form params and MACs, measured latency (and a predicted one, if asked)."""

    config: ArchConfig
    cost: Cost
    latency: LatencyStats
    predicted_ms: float | None = None  # from the device's latency table

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
                **({"predicted": self.predicted_ms} if self.predicted_ms is not None else {}),
            },
            "peak_memory_mb": self.latency.peak_memory_mb,
            "device": spec.device,
            "backend": spec.backend,
            "resolution": spec.height if spec.height == spec.width else [spec.height, spec.width],
            "batch_size": spec.batch_size,
            "dtype": spec.dtype,
            "threads": spec.threads,
        }


def profile(cfg: ArchConfig, spec: LatencySpec | None = None, *, predict: bool = False) -> ProfileReport:
    """Count the cost of ``cfg`` in closed form and measure its latency under ``spec``.

    ``spec`` defaults to CPU, ONNX Runtime, batch 1 at ``cfg.resolution``; its
    input size wins over ``cfg.resolution``. With ``predict``, the latency table of
    ``spec``'s device (``mvit-nas latency-table build``) predicts it too.
    """
    if spec is None:
        spec = LatencySpec(height=cfg.resolution, width=cfg.resolution)
    cfg = dataclasses.replace(cfg, resolution=min(spec.height, spec.width))
    cost = count_cost(cfg, spec.height, spec.width, spec.batch_size)
    predicted = None
    if predict:
        from mvit_nas.predictor import load_table

        predicted = load_table(spec).predict(cfg)  # a missing table is bad input, before the measurement
    return ProfileReport(config=cfg, cost=cost, latency=measure_config(cfg, spec), predicted_ms=predicted)
