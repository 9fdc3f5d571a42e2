"""GPU: xxs/xs/s latency on CUDA (eager, CUDA graph, ONNX Runtime CUDA) at batch 1 and 32, and a short search.

Writes ``results/benchmarks/gpu.json`` with the device name. On a machine
without CUDA it prints why and exits 0 without writing anything: a CPU figure is
never recorded as a GPU one. Designed to finish in under 8 minutes on one H100
(18 latency cells of ~5 s each, then a 6-trial, 2-worker Ray search bounded by
``SEARCH_TIMEOUT_S``).

The search's latency budget is measured, not guessed: the CUDA-graph batch-1
latency of xs on this GPU, so xxs fits, s most likely does not, and the sampler
has a real constraint to work against. Every cell and the search record their
own error instead of stopping the script, so one missing backend (e.g. an
onnxruntime without the CUDA provider) does not lose the rest.

Run::

    python -m benchmarks.gpu           # ~3-5 min on an H100
    python -m benchmarks.gpu --quick   # xxs only, 3 trials, marked quick
"""

from __future__ import annotations

import os

# The proxy trains with deterministic algorithms on; on CUDA, cuBLAS then needs a fixed workspace or it raises.
# Set before CUDA initialises here and before Ray starts, whose workers inherit the environment.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import sys
import tempfile
import time
import traceback
from typing import Any

import torch

from benchmarks._common import write_result
from mvit_nas.config import PRESETS, preset
from mvit_nas.latency import LatencySpec, measure
from mvit_nas.model import build_model
from mvit_nas.proxy import ProxySpec
from mvit_nas.report import front
from mvit_nas.run import TrialRecord
from mvit_nas.search import search
from mvit_nas.settings import SearchSettings

BACKENDS = ("eager", "cudagraph", "onnxruntime")
BATCHES = (1, 32)
RESOLUTION = 256
SEARCH_TRIALS = 6
SEARCH_WORKERS = 2
SEARCH_TIMEOUT_S = 180.0  # no new trial after this; with the trial timeout the script stays under 8 minutes
TRIAL_TIMEOUT_S = 120.0
FALLBACK_BUDGET_MS = 5.0  # only if xs could not be measured with CUDA graphs


def _error(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def profile(variants: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        model = build_model(preset(variant))
        for batch in BATCHES:
            for backend in BACKENDS:
                spec = LatencySpec(
                    device="cuda",
                    backend=backend,
                    batch_size=batch,
                    height=RESOLUTION,
                    width=RESOLUTION,
                    warmup=10,
                    min_repeats=30,
                    min_seconds=0.5,
                )
                row: dict[str, Any] = {"variant": variant, "backend": backend, "batch_size": batch}
                started = time.perf_counter()
                try:
                    stats = measure(model, spec)
                    row.update(
                        median_ms=stats.median_ms,
                        p10_ms=stats.p10_ms,
                        p90_ms=stats.p90_ms,
                        n=stats.n,
                        images_per_s=1e3 * batch / stats.median_ms,
                        peak_memory_mb=stats.peak_memory_mb,
                        spec=stats.spec.to_dict(),
                    )
                    shown = f"{stats.median_ms:8.3f} ms  {row['images_per_s']:9.0f} img/s"
                except Exception as error:  # recorded, and the other cells go on
                    traceback.print_exc()
                    row["error"] = _error(error)
                    shown = f"error: {row['error']}"
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(f"{variant:3s} batch {batch:2d} {backend:11s} {shown}", flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def _executor() -> str:
    """Ray where it is installed; else the in-process executor, one trial at a time and no trial timeout.

    Lent GPU machines may lack Ray (its wheel is larger than what can be carried there); the
    search is then still real, only not distributed, and the JSON says which executor ran.
    """
    try:
        import ray  # noqa: F401
    except ImportError:
        return "local"
    return "ray"


def short_search(budget_ms: float, trials: int) -> dict[str, Any]:
    executor = _executor()
    # Through Ray, two trials share the one GPU (half a GPU each), as `--gpus-per-trial 0.5` asks.
    ray_options: dict[str, Any] = {"workers": 1}
    if executor == "ray":
        ray_options = {"workers": SEARCH_WORKERS, "trial_timeout": TRIAL_TIMEOUT_S, "gpus_per_trial": 0.5}
    settings = SearchSettings(
        budget_ms=budget_ms,
        latency=LatencySpec(device="cuda", backend="cudagraph"),
        proxy=ProxySpec(device="cuda"),
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-search-") as run_dir:
        try:
            outcome = search(
                settings,
                run_dir,
                trials,
                executor=executor,
                timeout=SEARCH_TIMEOUT_S,
                **ray_options,
            )
        except Exception as error:
            traceback.print_exc()
            return {"error": _error(error), "executor": executor, "seconds": round(time.perf_counter() - started, 1)}
        rows = []
        for trial in outcome.study.get_trials(deepcopy=False):
            record = TrialRecord.of(trial)
            rows.append(
                {
                    "number": trial.number,
                    "state": trial.state.name,
                    "seed": record.seed,
                    "latency_ms": record.latency.median_ms if record.latency else None,
                    "feasible": record.feasible,
                    "accuracy": record.accuracy,
                    "proxy_seconds": record.proxy_seconds,
                    "duration_s": record.duration_s,
                    "failure": record.failure,
                    "node": record.node,
                    "hardware": record.hardware,
                }
            )
            print(f"trial {rows[-1]}", flush=True)
        pareto = [{"trial": t.number, "accuracy": t.values[0], "latency_ms": t.values[1]} for t in front(outcome.study)]
    return {
        "settings": settings.to_dict(),
        "workers": ray_options["workers"],
        "executor": executor,
        "finished": outcome.finished,
        "completed": sum(row["state"] == "COMPLETE" for row in rows),
        "failed": sum(row["state"] == "FAIL" for row in rows),
        "trials_per_hour": round(3600 * outcome.finished / max(time.perf_counter() - started, 1e-9), 1),
        "nodes": sorted({str(row["node"]) for row in rows}),
        "front": pareto,
        "trials": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _median(rows: list[dict[str, Any]], variant: str, backend: str, batch: int) -> float | None:
    for row in rows:
        if (row["variant"], row["backend"], row["batch_size"]) == (variant, backend, batch):
            return row.get("median_ms")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="xxs only and a 3-trial search")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu.py: CUDA is not available on this machine (torch.cuda.is_available() is False); nothing was run")
        print("and no results/benchmarks/gpu.json was written. Run it on a machine with an NVIDIA GPU.")
        return 0
    started = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}", flush=True)
    variants = ("xxs",) if args.quick else PRESETS
    rows = profile(variants)

    xs_graph = _median(rows, "xs", "cudagraph", 1) or _median(rows, "xxs", "cudagraph", 1)
    budget_ms = xs_graph if xs_graph is not None else FALLBACK_BUDGET_MS
    budget_source = "measured CUDA-graph batch-1 latency of " + ("xs" if "xs" in variants else "xxs")
    if xs_graph is None:
        budget_source = "fallback constant (CUDA-graph latency unavailable)"
    print(f"search budget {budget_ms:.3f} ms ({budget_source})", flush=True)
    search_result = short_search(budget_ms, 3 if args.quick else SEARCH_TRIALS)

    import onnxruntime

    speedups = {}
    for variant in variants:
        eager, graph = _median(rows, variant, "eager", 1), _median(rows, variant, "cudagraph", 1)
        if eager and graph:
            speedups[variant] = round(eager / graph, 3)
    cells_ok = all("error" not in row for row in rows)
    search_ok = "error" not in search_result and search_result["completed"] > 0 and search_result["failed"] == 0
    search_ok = search_ok and search_result["executor"] == "ray"  # the goal is GPU trials on Ray workers
    payload = {
        "goal": "xxs/xs/s profiled on CUDA with eager, cudagraph and onnxruntime at batch 1 and 32; "
        "a short search completes on the GPU through Ray, two trials sharing the GPU",
        "passed": cells_ok and search_ok,
        "quick": args.quick,
        "device": device,
        "summary": {
            "device": device,
            "cells_measured": sum("error" not in row for row in rows),
            "cells": len(rows),
            "cudagraph_speedup_over_eager_batch1": speedups,
            "search_completed_trials": search_result.get("completed"),
            "search_failed_trials": search_result.get("failed"),
        },
        "cuda": {
            "torch_cuda": torch.version.cuda,
            "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "onnxruntime_providers": onnxruntime.get_available_providers(),
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
        "profile": rows,
        "search": {"budget_ms": budget_ms, "budget_source": budget_source, **search_result},
        "duration_s": round(time.perf_counter() - started, 1),
    }
    print(f"passed: {payload['passed']}  ->  {write_result('gpu', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
