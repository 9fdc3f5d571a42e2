"""The front re-measured at the end of a search: every point timed again, together, and any that no longer fits dropped.

A trial was judged within budget on one measurement taken while the search ran.
Before the front is reported, :func:`check_front` times every front point again,
interleaved with the other front points and the reference models
(:func:`~mvit_nas.latency.interleave`), so that all of them see the same seconds
of the host. The references are timed again first and the check judges, like
the search, by the quietest calibration the run has seen
(:func:`~mvit_nas.run.judging_calibration`): a check on a busy machine, judged
by its own slow calibration, would drop points that fit. A point whose re-measured
judged latency is over the budget leaves the front, with the reason recorded in
the study (``front_dropped``: trials are never rewritten) and in
``front_latency.json``; the points it hid are then re-measured in turn, until
every point of the front has passed. A predicted-latency run meets the device
here for the first time.

Example::

    rows = check_front(Path("runs/demo"))
    [(row.trial, row.measured_ms, row.dropped) for row in rows]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mvit_nas import run as run_folder
from mvit_nas.atomic import write_text
from mvit_nas.config import ArchConfig
from mvit_nas.latency import (
    Benchmark,
    Calibration,
    DeviceLock,
    LatencySpec,
    LatencyStats,
    calibrate,
    device_lock,
    interleave,
    ladder,
)
from mvit_nas.model import build_model
from mvit_nas.report import front
from mvit_nas.report.front import dropped
from mvit_nas.run import TrialRecord

# Each point gets this many times the run's per-trial timing: the final check is worth more runs than a trial's.
SECONDS_PER_POINT_FACTOR = 2


@dataclass(frozen=True)
class FrontLatency:
    """A front point re-measured at the end: the latency the search saw, the re-measurement, the verdict.

    ``search_ms`` is the latency the trial was judged on during the search (predicted
    for a predicted-latency run); ``measured_ms`` the re-measured judged latency,
    ``low_ms`` / ``high_ms`` its 95% interval, ``median_ms`` the raw median beside it;
    ``dropped`` why the point left the front (None when it fits).
    """

    trial: int
    search_ms: float
    measured_ms: float
    low_ms: float
    high_ms: float
    median_ms: float
    error_pct: float
    within_budget: bool
    dropped: str | None = None


def measure_together(
    configs: Sequence[ArchConfig], spec: LatencySpec, calibration: Calibration, lock: DeviceLock | None = None
) -> list[LatencyStats]:
    """Time every config (each at its own resolution, under ``spec``) interleaved with the others and the references.

    :data:`SECONDS_PER_POINT_FACTOR` x ``spec.min_seconds`` per config; one judged record each, in order.
    """
    benchmarks = []
    for cfg in configs:
        sized = dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution)
        benchmarks.append(Benchmark(build_model(cfg), sized, peak_memory=False))
    seconds = SECONDS_PER_POINT_FACTOR * spec.min_seconds * len(configs)
    return interleave(benchmarks, ladder(spec, calibration), calibration, seconds, lock)


def check_front(run_dir: str | Path) -> list[FrontLatency]:
    """Re-measure the front of the run in ``run_dir`` until every point on it fits; write ``front_latency.json``."""
    run_dir = Path(run_dir)
    settings = run_folder.load_settings(run_dir)
    study = run_folder.open_study(run_dir)
    budget = settings.budget_ms
    lock = device_lock(settings.latency.device)
    calibration = run_folder.judging_calibration(study, calibrate(settings.latency, lock), settings.latency)
    rows: dict[int, FrontLatency] = {}
    gone = {str(number): reason for number, reason in dropped(study).items()}
    while points := [t for t in front(study) if t.number not in rows]:
        configs = [cfg for trial in points if (cfg := TrialRecord.of(trial).config) is not None]
        assert len(configs) == len(points)  # a front point was evaluated: it has its config
        measured = measure_together(configs, settings.latency, calibration, lock)
        for trial, stats in zip(points, measured, strict=True):
            low, high = stats.judged_interval_ms
            fits = stats.judged_ms <= budget
            reason = None
            if not fits:
                reason = (
                    f"re-measured at {stats.judged_ms:.2f} ms (95% interval {low:.2f}-{high:.2f}) "
                    f"with the other front points: over the {budget:g} ms budget"
                )
                gone[str(trial.number)] = reason
            search_ms = trial.values[1]
            error_pct = 100 * (search_ms - stats.judged_ms) / stats.judged_ms
            rows[trial.number] = FrontLatency(
                trial.number, search_ms, stats.judged_ms, low, high, stats.median_ms, error_pct, fits, reason
            )
        study.set_user_attr(run_folder.FRONT_DROPPED_ATTR, gone)
    text = json.dumps([dataclasses.asdict(row) for row in rows.values()], indent=2) + "\n"
    write_text(run_dir / run_folder.FRONT_LATENCY_FILE, text)
    return list(rows.values())
