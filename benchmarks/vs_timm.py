"""Latency of the generated MobileViT XXS/XS/S against timm's ``mobilevit_*``, interleaved in one process.

Both models get the same (random, timm-initialised) weights, so they compute the same
function and only the implementation differs. For each variant and backend (eager
PyTorch, ONNX Runtime) the two are prepared once, then timed in short alternating turns
(eager: one forward; ONNX Runtime: 20 after 3 warm-up runs) for many pairs, so that
drifts in machine load hit both alike.
Goal: ours / timm <= 1.0 (the median over pairs of the per-pair ratio, with a 95%
bootstrap interval). CPU, batch 1, 256 px, float32, 2 threads.

Run::

    python -m benchmarks.vs_timm   # writes results/benchmarks/vs_timm.json
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import timm
import torch
from scipy import stats
from torch import nn

from benchmarks._common import write_result
from mvit_nas import build_model, from_timm, preset
from mvit_nas.latency import Benchmark, LatencySpec

VARIANTS = ("xxs", "xs", "s")
BACKENDS = ("eager", "onnxruntime")
# Short turns, alternating, for many pairs: other work on a shared host slows stretches of
# seconds, which then hit both models of a pair alike, and the per-pair ratio cancels them.
# Eager: one forward per turn. ONNX Runtime: each session keeps its own spinning thread pool,
# so a switch of session costs a few runs; its turns are longer and start with a warm-up.
TURNS = {"eager": {"pairs": 200, "runs": 1, "warmup": 0}, "onnxruntime": {"pairs": 40, "runs": 20, "warmup": 3}}
GOAL = 1.0
SPEC = LatencySpec(device="cpu", batch_size=1, height=256, width=256, threads=2, min_seconds=0)
WARMUP = 10


def same_function_pair(variant: str) -> tuple[nn.Module, nn.Module]:
    """Our model and timm's, holding the same weights (never downloaded)."""
    theirs = timm.create_model(f"mobilevit_{variant}", pretrained=False).eval()
    ours = build_model(preset(variant)).eval()
    ours.load_state_dict(from_timm(theirs.state_dict(), reference=ours.state_dict()))
    x = torch.randn(1, 3, SPEC.height, SPEC.width)
    with torch.no_grad():
        difference = (ours(x) - theirs(x)).abs().max().item()
    assert difference <= 1e-4, f"{variant}: ours and timm's differ by {difference}"
    return ours, theirs


def compare(variant: str, backend: str, ours: nn.Module, theirs: nn.Module) -> dict[str, Any]:
    turn = TURNS[backend]
    per_turn = {"warmup": turn["warmup"], "min_repeats": turn["runs"], "max_repeats": turn["runs"]}
    spec = LatencySpec(**{**SPEC.to_dict(), "backend": backend, **per_turn})
    benchmarks = {"ours": Benchmark(ours, spec), "timm": Benchmark(theirs, spec)}
    for _ in range(WARMUP):
        for benchmark in benchmarks.values():
            benchmark.run()
    pairs = []
    for index in range(turn["pairs"]):
        order = ("ours", "timm") if index % 2 == 0 else ("timm", "ours")
        times = {who: benchmarks[who].run().median_ms for who in order}
        pairs.append((times["ours"], times["timm"]))
    ours_ms = np.array([pair[0] for pair in pairs])
    timm_ms = np.array([pair[1] for pair in pairs])
    ratios = ours_ms / timm_ms
    ratio = float(np.median(ratios))
    # 95% bootstrap interval of the median ratio: whether a difference is real or the machine's noise.
    interval = stats.bootstrap((ratios,), np.median, method="percentile", random_state=0).confidence_interval
    low, high = float(interval.low), float(interval.high)
    print(
        f"{variant:>3} {backend:<11} ours {np.median(ours_ms):8.2f} ms  timm {np.median(timm_ms):8.2f} ms  "
        f"ratio {ratio:.3f} [{low:.3f}, {high:.3f}]",
        flush=True,
    )
    return {
        "variant": variant,
        "backend": backend,
        "ours_median_ms": float(np.median(ours_ms)),
        "timm_median_ms": float(np.median(timm_ms)),
        "ratio": ratio,  # median over pairs of ours/timm
        "ratio_ci95": [low, high],
        "passed": ratio <= GOAL,
        "significantly_slower": low > GOAL,
        "peak_memory_mb": {"ours": benchmarks["ours"].peak_memory_mb, "timm": benchmarks["timm"].peak_memory_mb},
    }


def main() -> None:
    load_before, started = os.getloadavg(), time.perf_counter()
    results = []
    for variant in VARIANTS:
        ours, theirs = same_function_pair(variant)
        results.extend(compare(variant, backend, ours, theirs) for backend in BACKENDS)
    payload = {
        "goal": f"latency ours / timm <= {GOAL} for every variant and backend (median over alternating pairs)",
        "passed": all(result["passed"] for result in results),
        "spec": SPEC.to_dict() | {"backend": list(BACKENDS)},  # warm-up and repeats per turn: "turns"
        "turns": TURNS,
        # The machine is shared: the load around the run says how much to trust small differences.
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "duration_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    print(f"passed: {payload['passed']}  ->  {write_result('vs_timm', payload)}")


if __name__ == "__main__":
    main()
