"""Latency under load: is a latency measured while a 2-worker search runs the same as on an idle machine?

One config (xxs at 256 px, the search's default spec: ONNX Runtime on the CPU,
batch 1, 1 thread) is prepared once with the reference models and measured as a
trial is (judged: ratio to the references x the calibration timed once, idle, at
the start; :mod:`mvit_nas.latency.relative`), (a) on the idle machine before the
search, and (b) while a real 2-worker Ray search (``search(..., executor="ray",
workers=2)``, in a child process, with its own temporary run folder) runs.
During (b) the measurement holds the search's own device lock exclusively,
exactly as a trial's does. Goal: the median judged latency of the loaded rounds
within 10% of the idle one; the worst single round is reported too, and the raw
medians beside the judged ones.

The lock covers a trial's compute (its batches, validation, model building);
what it cannot cover still runs: Ray's own processes, a worker's start-up. The
JSON records every round with how many trials were in flight at that moment.

Run::

    python -m benchmarks.latency_under_load           # ~6 min on 2 cores
    python -m benchmarks.latency_under_load --quick   # fewer and shorter measurements, marked quick
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import write_result
from mvit_nas.config import preset
from mvit_nas.latency import (
    Benchmark,
    Calibration,
    DeviceLock,
    calibrate,
    device_lock,
    interleave,
    ladder,
)
from mvit_nas.model import build_model
from mvit_nas.run import STORAGE_FILE
from mvit_nas.search import search
from mvit_nas.settings import SearchSettings

GOAL = 0.10
VARIANT = "xxs"
BUDGET_MS = 1000.0  # every config trains: the load is the search's heaviest kind of trial
SEARCH_TRIALS = 200  # more than can finish: the search is stopped once the loaded measurements are done
READY_TIMEOUT_S = 900.0


def _run_search(run_dir: str, trials: int) -> None:
    """The background search (in a child process); SIGINT ends it the way Ctrl-C would."""
    search(SearchSettings(budget_ms=BUDGET_MS), run_dir, trials, workers=2, executor="ray")


def running_trials(run_dir: Path) -> int:
    """Trials in flight, read from the study file without touching it (read-only SQLite)."""
    path = run_dir / STORAGE_FILE
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0])
    except sqlite3.Error:  # not created yet, or locked for a moment by a write
        return 0


def measure(
    bench: Benchmark,
    calibration: Calibration,
    lock: DeviceLock,
    phase: str,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    in_flight = running_trials(run_dir) if run_dir is not None else 0
    stats = interleave([bench], ladder(bench.spec, calibration), calibration, bench.spec.min_seconds, lock)[0]
    low, high = stats.judged_interval_ms
    row = {
        "phase": phase,
        "judged_ms": stats.judged_ms,
        "judged_low_ms": low,
        "judged_high_ms": high,
        "median_ms": stats.median_ms,
        "reference_median_ms": stats.reference_median_ms,
        "n": stats.n,
        "trials_in_flight": in_flight,
        "time": time.time(),
    }
    print(f"{phase:6s} judged {stats.judged_ms:7.3f} ms  raw {stats.median_ms:7.3f}  in flight {in_flight}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter measurements")
    args = parser.parse_args()
    idle_rounds, loaded_rounds = (2, 3) if args.quick else (3, 8)
    gap_s, settle_s = (2.0, 5.0) if args.quick else (10.0, 20.0)
    spec = SearchSettings(budget_ms=BUDGET_MS).latency
    if args.quick:
        spec = dataclasses.replace(spec, min_seconds=0.3)
    cfg = preset(VARIANT)
    spec = dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution)
    load_before, started = os.getloadavg(), time.perf_counter()
    bench = Benchmark(build_model(cfg), spec)  # exported once: every round times the same sessions

    rows: list[dict[str, Any]] = []
    error = None
    with tempfile.TemporaryDirectory(prefix="latency-under-load-") as scratch:
        run_dir = Path(scratch) / "run"
        lock = device_lock("cpu")  # the very lock the search's trials take
        calibration = calibrate(spec, lock)  # idle, once, as a run does at its start
        rows += [measure(bench, calibration, lock, "idle") for _ in range(idle_rounds)]

        child = multiprocessing.get_context("spawn").Process(target=_run_search, args=(str(run_dir), SEARCH_TRIALS))
        child.start()
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while running_trials(run_dir) < 2 and child.is_alive() and time.monotonic() < deadline:
                time.sleep(1.0)
            if not child.is_alive() or running_trials(run_dir) < 2:
                error = f"the background search did not reach 2 trials in flight (alive: {child.is_alive()})"
            else:
                time.sleep(settle_s)  # past worker start-up, into training
                for _ in range(loaded_rounds):
                    if not child.is_alive():
                        error = "the background search ended before the loaded measurements were done"
                        break
                    rows.append(measure(bench, calibration, lock, "loaded", run_dir))
                    time.sleep(gap_s)
        finally:
            if child.is_alive():
                os.kill(child.pid, signal.SIGINT)  # the search fails its in-flight trials and shuts Ray down
                child.join(120)
            if child.is_alive():
                child.kill()
                child.join()

    def summary(key: str) -> tuple[float, float | None, float | None, float | None]:
        idle = statistics.median(row[key] for row in rows if row["phase"] == "idle")
        loaded_values = [row[key] for row in rows if row["phase"] == "loaded"]
        loaded = statistics.median(loaded_values) if loaded_values else None
        deviation = (loaded - idle) / idle if loaded is not None else None
        worst = max((abs(value - idle) / idle for value in loaded_values), default=None)
        return idle, loaded, deviation, worst

    idle, loaded, deviation, worst = summary("judged_ms")
    raw_idle, raw_loaded, raw_deviation, raw_worst = summary("median_ms")
    passed = error is None and deviation is not None and abs(deviation) <= GOAL
    print(f"judged: idle {idle:.3f} ms, loaded {loaded} ms, deviation {deviation}, worst round {worst}")
    print(f"raw:    idle {raw_idle:.3f} ms, loaded {raw_loaded} ms, deviation {raw_deviation}, worst round {raw_worst}")
    payload = {
        "goal": f"median judged latency under a 2-worker search within {GOAL:.0%} of idle (measured before it)",
        "passed": passed,
        "quick": args.quick,
        "summary": {
            "idle_ms": round(idle, 4),
            "loaded_ms": None if loaded is None else round(loaded, 4),
            "deviation": None if deviation is None else round(deviation, 4),
            "worst_round_deviation": None if worst is None else round(worst, 4),
            "raw_deviation": None if raw_deviation is None else round(raw_deviation, 4),
            "raw_worst_round_deviation": None if raw_worst is None else round(raw_worst, 4),
        },
        "calibration": calibration.to_dict(),
        "error": error,
        "config": VARIANT,
        "spec": spec.to_dict(),
        "search": {
            "workers": 2,
            "executor": "ray",
            "budget_ms": BUDGET_MS,
            "settings": "SearchSettings defaults (TPE, default proxy and latency spec)",
        },
        "lock": "exclusive device_lock('cpu'), as a trial's latency measurement",
        "rounds": {"idle": idle_rounds, "loaded": sum(r["phase"] == "loaded" for r in rows), "gap_s": gap_s},
        "duration_s": round(time.perf_counter() - started, 1),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "measurements": rows,
    }
    print(f"passed: {passed}  ->  {write_result('latency_under_load', payload)}")


if __name__ == "__main__":
    main()
