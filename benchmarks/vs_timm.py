"""Latency of the generated MobileViT XXS/XS/S against timm's ``mobilevit_*``, interleaved in one process.

Both models get the same (random, timm-initialised) weights, so they compute the same
function and only the implementation differs. For each variant and backend (eager
PyTorch, ONNX Runtime) the two are prepared once, then timed in alternating order over
several rounds, so that drifts in machine load hit both alike. Goal: ours / timm <= 1.0
(overall medians, i.e. the median over rounds of each round's median). CPU, batch 1,
256 px, float32, 2 threads.

Run::

    python benchmarks/vs_timm.py   # writes results/benchmarks/vs_timm.json
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import timm
import torch
from torch import nn

from mvit_nas import build_model, from_timm, preset
from mvit_nas.latency import Benchmark, LatencySpec

try:  # run as a script (benchmarks/ on sys.path) or as a module of the repository
    from _common import write_result
except ImportError:  # pragma: no cover
    from benchmarks._common import write_result

VARIANTS = ("xxs", "xs", "s")
BACKENDS = ("eager", "onnxruntime")
ROUNDS = 24  # many short rounds rather than few long ones: both models see the same swings in load
GOAL = 1.0
SPEC = LatencySpec(
    device="cpu", batch_size=1, height=256, width=256, threads=2, warmup=3, min_repeats=8, min_seconds=0.3
)


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
    spec = LatencySpec(**{**SPEC.to_dict(), "backend": backend})
    benchmarks = {"ours": Benchmark(ours, spec), "timm": Benchmark(theirs, spec)}
    rounds = []
    for index in range(ROUNDS):
        order = ("ours", "timm") if index % 2 == 0 else ("timm", "ours")
        medians = {who: benchmarks[who].run().median_ms for who in order}
        rounds.append({"ours_ms": medians["ours"], "timm_ms": medians["timm"], "first": order[0]})
    ours_ms = statistics.median(r["ours_ms"] for r in rounds)
    timm_ms = statistics.median(r["timm_ms"] for r in rounds)
    ratio = ours_ms / timm_ms
    paired = statistics.median(r["ours_ms"] / r["timm_ms"] for r in rounds)
    print(f"{variant:>3} {backend:<11} ours {ours_ms:8.2f} ms  timm {timm_ms:8.2f} ms  ratio {ratio:.3f}", flush=True)
    return {
        "variant": variant,
        "backend": backend,
        "ours_median_ms": ours_ms,
        "timm_median_ms": timm_ms,
        "ratio": ratio,
        "paired_ratio_median": paired,  # median over rounds of ours/timm within the round
        "passed": ratio <= GOAL,
        "peak_memory_mb": {"ours": benchmarks["ours"].peak_memory_mb, "timm": benchmarks["timm"].peak_memory_mb},
        "rounds": rounds,
    }


def main() -> None:
    load_before, started = os.getloadavg(), time.perf_counter()
    results = []
    for variant in VARIANTS:
        ours, theirs = same_function_pair(variant)
        results.extend(compare(variant, backend, ours, theirs) for backend in BACKENDS)
    payload = {
        "goal": f"latency ours / timm <= {GOAL} for every variant and backend (median over interleaved rounds)",
        "passed": all(result["passed"] for result in results),
        "spec": SPEC.to_dict() | {"backend": list(BACKENDS)},
        "rounds": ROUNDS,
        # The machine is shared: the load around the run says how much to trust small differences.
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "duration_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    print(f"passed: {payload['passed']}  ->  {write_result('vs_timm', payload)}")


if __name__ == "__main__":
    main()
