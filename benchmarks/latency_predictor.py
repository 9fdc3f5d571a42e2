"""Latency predictor vs direct measurement, per backend.

For each backend (default: ONNX Runtime and eager, on CPU with every core the
process may use), builds a latency table for the default space (block timings,
per-kind fits, whole-network correction fitted on ~25 measured configs), then
draws N random configs of the space (seeded, one random choice per knob; kept
disjoint from the table's calibration configs) and compares the table's
prediction with the search's own measurement of each: the judged latency (ratio
to the references x one idle calibration, :mod:`mvit_nas.latency.relative`),
taken in ``--processes`` (3) separate processes, each in its own order, and the
median of those taken as the truth.

Reported per backend: share of configs predicted within +/-10%, median and max
absolute % error, the table build time and the prediction time per config.
Goal: at least 90% within +/-10% and a median |error| of at most 5% on every backend.

Run: ``python -m benchmarks.latency_predictor`` (~30 min on 2 cores; the ONNX
Runtime table is also saved to ``results/latency_tables/``), or ``--quick`` (5
configs, tiny tables, a few minutes). Writes ``results/benchmarks/latency_predictor.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import write_result
from mvit_nas.config import ArchConfig
from mvit_nas.latency import BACKENDS, Calibration, LatencySpec, calibrate, measure_judged, resolve_spec
from mvit_nas.model import build_model
from mvit_nas.predictor import (
    LatencyTable,
    build_table,
    calibration_configs,
    default_table_path,
    load_table,
    random_space_configs,
)
from mvit_nas.settings import SEARCH_THREADS
from mvit_nas.space import load_space

GOAL_WITHIN = 0.90
GOAL_MEDIAN_ERROR = 0.05
TOLERANCE = 0.10
# The evaluation draws from its own seed stream, far from the table's (seed, seed + 1).
EVAL_SEED_OFFSET = 1000
QUICK_BLOCKS = {"stem": 3, "mv2": 8, "mobilevit": 8, "head": 3}
QUICK_BLOCK_TIMING = {"warmup": 2, "min_repeats": 8, "min_seconds": 0.1}
QUICK_WHOLE_CONFIGS = 4
QUICK_MEASURE = {"warmup": 3, "min_repeats": 10, "min_seconds": 0.2}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _evaluation_configs(space: Any, count: int, seed: int) -> list[Any]:
    """``count`` distinct random configs of ``space``."""
    configs: list[Any] = []
    for cfg in random_space_configs(space, 20 * count, seed):
        if cfg not in configs:
            configs.append(cfg)
        if len(configs) == count:
            break
    return configs


def child_measure(job_file: str) -> None:
    """In a child process: the judged latency of every config of the job file, in its order, as one JSON line."""
    job = json.loads(Path(job_file).read_text())
    spec, calibration = LatencySpec.from_dict(job["spec"]), Calibration.from_dict(job["calibration"])
    judged = []
    for config in job["configs"]:
        cfg = ArchConfig.from_dict(config)
        at_size = dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution)
        judged.append(measure_judged(build_model(cfg), at_size, calibration).judged_ms)
    print(json.dumps(judged))


def measure_in_processes(configs: list[Any], spec: LatencySpec, processes: int, scratch: Path) -> list[list[float]]:
    """Each config's judged latency from ``processes`` fresh processes, each measuring all of them in its own order."""
    calibration = calibrate(spec)  # idle, once, as a search does at its start
    runs: list[list[float]] = [[] for _ in configs]
    for process in range(processes):
        order = list(range(len(configs)))
        order = order[process * len(order) // processes :] + order[: process * len(order) // processes]
        job = scratch / f"measure-{process}.json"
        payload = {"spec": spec.to_dict(), "calibration": calibration.to_dict()}
        job.write_text(json.dumps({**payload, "configs": [configs[i].to_dict() for i in order]}))
        command = [sys.executable, "-m", "benchmarks.latency_predictor", "--child-measure", str(job)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        for index, value in zip(order, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
            runs[index].append(value)
        _log(f"measuring process {process + 1}/{processes} done")
    return runs


def _prediction_us(table: LatencyTable, configs: list[Any]) -> float:
    """Median microseconds of one ``table.predict`` call."""
    samples = []
    for cfg in configs:
        begin = time.perf_counter()
        table.predict(cfg)
        samples.append((time.perf_counter() - begin) * 1e6)
    return statistics.median(samples)


def run_backend(backend: str, args: argparse.Namespace, space: Any, out_dir: Path) -> dict[str, Any]:
    timing = QUICK_MEASURE if args.quick else {}
    spec = resolve_spec(device="cpu", backend=backend, threads=args.threads, **timing)
    configs = _evaluation_configs(space, args.n, args.seed + EVAL_SEED_OFFSET)
    if args.table and backend == "onnxruntime":
        table = load_table(spec, args.table)
        build_seconds = None
    else:
        _log(f"[{backend}] building the latency table")
        build_kwargs: dict[str, Any] = {"seed": args.seed, "exclude": configs}
        if args.quick:
            build_kwargs |= {
                "blocks": QUICK_BLOCKS,
                "whole_configs": QUICK_WHOLE_CONFIGS,
                "block_timing": QUICK_BLOCK_TIMING,
            }
        table = build_table(spec, space, **build_kwargs)
        build_seconds = table.build_seconds
        path = table.save(out_dir / default_table_path(spec).name)
        _log(f"[{backend}] table built in {build_seconds:.0f} s, saved to {path}")
    overlap = set(calibration_configs(table)) & set(configs)
    if overlap:
        # A fixed table (--table) may have calibrated on some of them: evaluate on the rest only.
        configs = [cfg for cfg in configs if cfg not in overlap]
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        runs = measure_in_processes(configs, spec, args.processes, Path(scratch))
    for cfg, judged in zip(configs, runs, strict=True):
        predicted, measured = table.predict(cfg), statistics.median(judged)
        error = (predicted - measured) / measured
        records.append(
            {
                "resolution": cfg.resolution,
                "predicted_ms": round(predicted, 4),
                "measured_ms": round(measured, 4),
                "measured_runs_ms": [round(value, 4) for value in judged],
                "error_pct": round(100 * error, 2),
                "config": cfg.to_dict(),
            }
        )
        _log(f"[{backend}] predicted {predicted:.2f} ms, measured {measured:.2f} ms ({100 * error:+.1f}%)")
    errors = np.abs([record["error_pct"] / 100 for record in records])
    within = float(np.mean(errors <= TOLERANCE))
    measured_ms = [record["measured_ms"] for record in records]
    return {
        "spec": spec.to_dict(),
        "configs": len(records),
        "calibration_configs": len(table.calibration),
        "excluded_overlap": len(overlap),
        "within_10pct": round(within, 4),
        "median_abs_error_pct": round(float(np.median(errors) * 100), 2),
        "mean_abs_error_pct": round(float(np.mean(errors) * 100), 2),
        "max_abs_error_pct": round(float(np.max(errors) * 100), 2),
        "measured_ms_range": [min(measured_ms), max(measured_ms)],
        "spearman": round(_spearman([r["predicted_ms"] for r in records], measured_ms), 4),
        "table_build_seconds": build_seconds,
        "table_blocks": {kind: len(entries) for kind, entries in table.blocks.items()},
        "table_fit": table.fit,
        "correction": table.correction,
        "prediction_us": round(_prediction_us(table, configs), 1),
        "goal": f">= {GOAL_WITHIN:.0%} of configs within +/-{TOLERANCE:.0%}, median |error| <= {GOAL_MEDIAN_ERROR:.0%}",
        "passed": within >= GOAL_WITHIN and float(np.median(errors)) <= GOAL_MEDIAN_ERROR,
        "measured_spread_across_processes": round(
            float(np.median([(max(r) - min(r)) / statistics.median(r) for r in runs])), 4
        ),
        "records": records,
    }


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 configs, tiny tables (smoke run)")
    parser.add_argument("--n", type=int, help="evaluation configs per backend (default: 50; --quick: 5)")
    parser.add_argument("--backends", default="onnxruntime", help="comma-separated (default: onnxruntime)")
    parser.add_argument("--threads", type=int, default=SEARCH_THREADS, help="CPU threads (default: a search's)")
    parser.add_argument("--processes", type=int, default=3, help="measuring processes per config (default 3)")
    parser.add_argument("--child-measure", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", help="use this ONNX Runtime table instead of building one")
    args = parser.parse_args()
    if args.child_measure:
        child_measure(args.child_measure)
        return
    args.n = args.n or (5 if args.quick else 50)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    for name in backends:
        if name not in BACKENDS:
            parser.error(f"--backends: {name!r} is not one of {', '.join(BACKENDS)}")
    space = load_space()
    started = time.perf_counter()
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as scratch:
        # A full run leaves its tables where the CLI looks for them; a smoke run leaves nothing behind.
        out_dir = Path(scratch) if args.quick else default_table_path(resolve_spec(device="cpu")).parent
        results = {backend: run_backend(backend, args, space, out_dir) for backend in backends}
    payload = {
        "description": "latency table prediction vs direct measurement on random configs of the default space",
        "space": space.name,
        "quick": args.quick,
        "seed": args.seed,
        "goal": f">= {GOAL_WITHIN:.0%} of configs within +/-{TOLERANCE:.0%} and median |error| <= "
        f"{GOAL_MEDIAN_ERROR:.0%} on every backend (truth: median judged latency of {args.processes} processes)",
        "passed": all(result["passed"] for result in results.values()),
        # Flat scalars, so that make_table.py's generic summary can show them.
        "summary": {
            f"{backend}_{key}": result[key]
            for backend, result in results.items()
            for key in ("within_10pct", "median_abs_error_pct", "max_abs_error_pct")
        }
        | {"configs_per_backend": args.n},
        "backends": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
        # 1/5/15-minute load averages before and after: other work on the machine makes latency noisy.
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
    }
    path = write_result("latency_predictor", payload)
    for backend, result in results.items():
        print(
            f"{backend}: {result['within_10pct']:.0%} within +/-10% over {result['configs']} configs, "
            f"median |error| {result['median_abs_error_pct']:.1f}%, max {result['max_abs_error_pct']:.1f}%"
        )
    print(f"goal {payload['goal']}: {'passed' if payload['passed'] else 'FALLS SHORT'}; wrote {path}")


if __name__ == "__main__":
    main()
