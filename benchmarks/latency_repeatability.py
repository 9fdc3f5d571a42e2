"""Repeatability of measured latency across processes, per backend.

Each preset (xxs, xs, s at 256 px) is profiled R times, each time in a fresh
process running ``mvit-nas profile --variant V --json --backend B --device cpu``
(the CLI as a user runs it: new export, new ONNX Runtime session, new
allocator state). Runs are interleaved round-robin over (backend, variant), so
a slow drift of the machine shows up in every variant's spread instead of
hiding between variants.

Reported per backend and variant: the medians of the R runs, their spread
``(max - min) / median`` and coefficient of variation ``stdev / mean``.
Goal: spread under 5% on CPU for every variant and backend.

Run: ``python -m benchmarks.latency_repeatability`` (5 runs x 3 presets x 2
backends, ~10 min on 2 cores) or ``--quick`` (2 runs, xxs only). Writes
``results/benchmarks/latency_repeatability.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import write_result

GOAL_SPREAD = 0.05
PROFILE_TIMEOUT_S = 600


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_once(variant: str, backend: str, threads: int | None) -> dict[str, Any]:
    """One ``mvit-nas profile --json`` in a fresh process (``python -m mvit_nas.cli``: this interpreter)."""
    command = [sys.executable, "-m", "mvit_nas.cli", "profile", "--variant", variant, "--json"]
    command += ["--device", "cpu", "--backend", backend]
    if threads is not None:
        command += ["--threads", str(threads)]
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=PROFILE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = round(time.perf_counter() - begin, 2)
    return report


def summarise(medians: list[float]) -> dict[str, Any]:
    middle = statistics.median(medians)
    spread = (max(medians) - min(medians)) / middle
    cv = statistics.stdev(medians) / statistics.mean(medians) if len(medians) > 1 else 0.0
    return {
        "medians_ms": [round(value, 4) for value in medians],
        "median_ms": round(middle, 4),
        "spread": round(spread, 5),
        "cv": round(cv, 5),
        "passed": spread < GOAL_SPREAD,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs, xxs only (smoke run)")
    parser.add_argument("--runs", type=int, help="processes per (variant, backend) (default: 5; --quick: 2)")
    parser.add_argument("--variants", help="comma-separated presets (default: xxs,xs,s; --quick: xxs)")
    parser.add_argument("--backends", default="onnxruntime,eager", help="comma-separated (default: onnxruntime,eager)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the CLI's, all cores)")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    variants = (args.variants or ("xxs" if args.quick else "xxs,xs,s")).split(",")
    backends = args.backends.split(",")
    started = time.perf_counter()
    load_start = list(os.getloadavg())
    reports: dict[tuple[str, str], list[dict[str, Any]]] = {(b, v): [] for b in backends for v in variants}
    for run in range(runs):
        for backend in backends:
            for variant in variants:
                report = profile_once(variant, backend, args.threads)
                reports[backend, variant].append(report)
                _log(f"run {run + 1}/{runs} {backend} {variant}: median {report['latency_ms']['median']:.2f} ms")
    results: dict[str, Any] = {}
    for backend in backends:
        per_variant = {}
        for variant in variants:
            runs_of = reports[backend, variant]
            summary = summarise([report["latency_ms"]["median"] for report in runs_of])
            summary["threads"] = runs_of[0]["threads"]
            summary["n_per_run"] = [report["latency_ms"]["n"] for report in runs_of]
            summary["wall_seconds_per_run"] = [report["wall_seconds"] for report in runs_of]
            per_variant[variant] = summary
        results[backend] = {
            "variants": per_variant,
            "max_spread": max(summary["spread"] for summary in per_variant.values()),
            "max_cv": max(summary["cv"] for summary in per_variant.values()),
            "passed": all(summary["passed"] for summary in per_variant.values()),
        }
    payload = {
        "description": "spread of profile medians over separate processes, per backend (CPU, 256 px, batch 1)",
        "quick": args.quick,
        "runs": runs,
        "goal": f"(max - min) / median of the run medians < {GOAL_SPREAD:.0%} for every preset and backend",
        "passed": all(result["passed"] for result in results.values()),
        # Flat scalars, so that make_table.py's generic summary can show them.
        "summary": {
            f"{backend}_{key}": result[key] for backend, result in results.items() for key in ("max_spread", "max_cv")
        }
        | {"runs": runs, "variants": ",".join(variants)},
        "backends": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
        # 1/5/15-minute load averages before and after: other work on the machine makes latency noisy.
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
    }
    path = write_result("latency_repeatability", payload)
    for backend, result in results.items():
        spreads = ", ".join(f"{v} {s['spread']:.1%} (cv {s['cv']:.1%})" for v, s in result["variants"].items())
        print(f"{backend}: spread {spreads}")
    print(f"goal {payload['goal']}: {'passed' if payload['passed'] else 'FALLS SHORT'}; wrote {path}")


if __name__ == "__main__":
    main()
