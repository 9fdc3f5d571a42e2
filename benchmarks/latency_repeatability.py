"""Repeatability of the judged latency across processes, on an idle machine and with a busy core beside it.

A search calibrates the references once, quietly, at its start, and then judges
every trial in a worker process as ratio-to-the-references x that calibration
(:mod:`mvit_nas.latency.relative`). This benchmark does the same: per thread
count, one child process calibrates on the idle machine; then each preset (xxs,
xs, s at 256 px, the default CPU backend, ONNX Runtime) is measured R times, each
time in a fresh process (new export, new sessions), round-robin over the presets,
first with the machine idle, then with a busy loop (``while True: pass``) pinned
to the core the measurement does not use (with one measuring thread; with two,
the loop shares a measuring core, which is the point of comparing them).

Reported per (threads, condition, preset): the judged latencies and their spread
``(max - min) / median``, the raw medians and theirs, and the busy median's
deviation from the idle one. Goal, at the search's thread count
(:data:`~mvit_nas.settings.SEARCH_THREADS`): judged spread under 5% for every
preset, idle and busy, and the busy median within 10% of the idle one.

Run: ``python -m benchmarks.latency_repeatability`` (~11 min on 2 cores) or
``--quick`` (2 runs, xxs only, 1 thread); ``--min-seconds 3 --threads 1 --name
latency_repeatability_3s`` asks how much longer measurements would buy. Writes
``results/benchmarks/latency_repeatability.json`` (or ``NAME.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import write_result
from mvit_nas.latency import LatencySpec
from mvit_nas.settings import SEARCH_THREADS

GOAL_SPREAD, GOAL_BUSY = 0.05, 0.10
DEFAULT_MIN_SECONDS = LatencySpec.min_seconds  # a search's measurement length
BACKEND = "onnxruntime"
CHILD_TIMEOUT_S = 600


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _child(what: str, threads: int, calibration_file: str, min_seconds: float, variant: str = "") -> dict[str, Any]:
    """Run this module's ``--child`` mode in a fresh interpreter; its one JSON line."""
    command = [sys.executable, "-m", "benchmarks.latency_repeatability", "--child", what, "--threads", str(threads)]
    command += ["--calibration", calibration_file, "--variant", variant, "--min-seconds", str(min_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(what: str, threads: int, calibration_file: str, variant: str, min_seconds: float) -> None:
    """In the child: calibrate (write the file) or measure one preset against the file's calibration."""
    from mvit_nas.config import preset
    from mvit_nas.latency import Calibration, calibrate, measure_judged, resolve_spec
    from mvit_nas.model import build_model

    spec = resolve_spec(device="cpu", backend=BACKEND, height=256, threads=threads, min_seconds=min_seconds)
    if what == "calibrate":
        calibration = calibrate(spec)
        Path(calibration_file).write_text(json.dumps(calibration.to_dict()))
        print(json.dumps({"reference_ms": calibration.reference_ms}))
        return
    calibration = Calibration.from_dict(json.loads(Path(calibration_file).read_text()))
    stats = measure_judged(build_model(preset(variant)), spec, calibration)
    low, high = stats.judged_interval_ms
    print(json.dumps({"judged_ms": stats.judged_ms, "low_ms": low, "high_ms": high, "median_ms": stats.median_ms}))


def _busy_loop(threads: int) -> subprocess.Popen[bytes]:
    """A CPU-bound process on the cores the measurement leaves free (the first ones; it pins to the last)."""
    cores = sorted(os.sched_getaffinity(0))
    free = cores[: max(1, len(cores) - threads)]
    return subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, free)
    )


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs, xxs only, the search's thread count")
    parser.add_argument("--runs", type=int, help="processes per (threads, condition, preset) (default 5; quick 2)")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1,2; quick: 1)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=DEFAULT_MIN_SECONDS,
        help=f"seconds each measurement lasts (default {DEFAULT_MIN_SECONDS:g}, the search's)",
    )
    parser.add_argument("--name", default="latency_repeatability", help="result file name, for a variant")
    parser.add_argument("--child", choices=("calibrate", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--calibration", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, int(args.threads), args.calibration, args.variant, args.min_seconds)
        return
    runs = args.runs or (2 if args.quick else 5)
    variants = ["xxs"] if args.quick else ["xxs", "xs", "s"]
    thread_counts = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    started, load_start = time.perf_counter(), list(os.getloadavg())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="latency-repeatability-") as scratch:
        for threads in thread_counts:
            calibration_file = str(Path(scratch) / f"calibration-{threads}.json")
            reference = _child("calibrate", threads, calibration_file, args.min_seconds)["reference_ms"]
            _log(f"{threads} thread(s): references calibrated at {reference} ms")
            per_condition: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for condition in ("idle", "busy"):
                busy = _busy_loop(threads) if condition == "busy" else None
                try:
                    rows: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
                    for run in range(runs):
                        for variant in variants:
                            row = _child("measure", threads, calibration_file, args.min_seconds, variant)
                            rows[variant].append(row)
                            _log(f"{threads}t {condition} run {run + 1}/{runs} {variant}: judged "
                                 f"{row['judged_ms']:.3f} ms, raw {row['median_ms']:.3f} ms")  # fmt: skip
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                per_condition[condition] = rows
            summary = {}
            for variant in variants:
                cells: dict[str, Any] = {}
                for condition, rows in per_condition.items():
                    judged = [row["judged_ms"] for row in rows[variant]]
                    raw = [row["median_ms"] for row in rows[variant]]
                    cells[condition] = {
                        "judged_ms": [round(v, 4) for v in judged],
                        "judged_spread": round(_spread(judged), 4),
                        "raw_ms": [round(v, 4) for v in raw],
                        "raw_spread": round(_spread(raw), 4),
                        "intervals_ms": [[round(r["low_ms"], 4), round(r["high_ms"], 4)] for r in rows[variant]],
                    }
                idle = statistics.median(cells["idle"]["judged_ms"])
                cells["busy_deviation"] = round(statistics.median(cells["busy"]["judged_ms"]) / idle - 1, 4)
                raw_idle = statistics.median(cells["idle"]["raw_ms"])
                cells["raw_busy_deviation"] = round(statistics.median(cells["busy"]["raw_ms"]) / raw_idle - 1, 4)
                cells["passed"] = (
                    cells["idle"]["judged_spread"] < GOAL_SPREAD
                    and cells["busy"]["judged_spread"] < GOAL_SPREAD
                    and abs(cells["busy_deviation"]) <= GOAL_BUSY
                )
                summary[variant] = cells
            results[f"{threads}_threads"] = {"reference_ms": reference, "variants": summary}
    judged_at = results.get(f"{SEARCH_THREADS}_threads")
    passed = judged_at is not None and all(cells["passed"] for cells in judged_at["variants"].values())
    payload = {
        "goal": f"at the search's {SEARCH_THREADS} thread(s): judged latency spread < {GOAL_SPREAD:.0%} over "
        f"{runs} processes per preset, idle and with a busy core, and busy within {GOAL_BUSY:.0%} of idle",
        "passed": passed,
        "quick": args.quick,
        "backend": BACKEND,
        "runs": runs,
        "min_seconds": args.min_seconds,
        "results": results,
        "duration_s": round(time.perf_counter() - started, 1),
        "load_average_1min": {"before": load_start[0], "after": os.getloadavg()[0]},
    }
    print(f"passed: {passed}  ->  {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
