"""Reference-normalised latency: a candidate timed in alternation with a fixed reference model.

On a shared machine a model's raw median moves with whatever else runs (the same
model measured up to 1.65x apart between processes here), but a slow stretch
slows a second model timed in the same seconds just as much. So every judged
measurement alternates turns of the candidate with turns of the reference
(MobileViT-XXS at 128 px, same backend and threads), and the
latency a budget is judged on is ``ratio x calibrated reference``: the ratio of
the two medians, times the reference's latency timed once, quietly, when the run
starts (:func:`calibrate`). The ratio's 95% interval is a paired bootstrap over
the rounds (``scipy.stats.bootstrap``); the candidate's own raw statistics are
kept beside it.

A turn is a stretch of time, not a count of runs: a model timed right after
another runs slower for tens of milliseconds, more so a small model after a
large one. With turns of 5 runs the reference ran 15-28% slower than alone and
judged latencies came out up to 20% low for large candidates; with turns of
:data:`SEGMENT_SECONDS` whose first quarter is left out, judged latencies were
within 3% of each model timed alone (xxs@96 to xs@256, 2-core EPYC).

Example:

>>> from mvit_nas.latency import resolve_spec
>>> spec = resolve_spec(device="cpu", backend="eager", height=32, threads=1, warmup=1, min_repeats=5, min_seconds=0)
>>> small = Calibration(reference_ms=1.0, spec=spec)
>>> stats = measure_judged(torch.nn.Conv2d(3, 4, 1), spec, small, reference=torch.nn.Conv2d(3, 4, 3))
>>> stats.ratio_low <= stats.ratio <= stats.ratio_high and stats.judged_ms == stats.ratio * 1.0
True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from torch import nn

from mvit_nas.config import preset
from mvit_nas.latency.lock import DeviceLock
from mvit_nas.latency.spec import LatencySpec, LatencyStats, hardware_name
from mvit_nas.latency.timing import Benchmark, timing_context
from mvit_nas.model import build_model
from mvit_nas.validate import check_keys

REFERENCE_NAME = "xxs@128"
REFERENCE_SIZE = 128
SEGMENT_SECONDS = 0.2  # one turn of a model, at most: short enough that both see the same seconds of the host
SETTLE_FRACTION = 0.25  # the start of a turn left out: the model is still slowed by the one before it
MIN_ROUNDS = 5  # rounds of (candidate turn, reference turn), at least, however short the measurement
CALIBRATION_BURSTS = 3  # a calibration times the reference this many times, a pause apart; the fastest counts
CALIBRATION_PAUSE_S = 1.0
CONFIDENCE = 0.95
RESAMPLES = 999


def reference_model() -> nn.Module:
    """The fixed reference: MobileViT-XXS (timed at :data:`REFERENCE_SIZE` px)."""
    return build_model(dataclasses.replace(preset("xxs"), resolution=REFERENCE_SIZE))


def reference_spec(spec: LatencySpec) -> LatencySpec:
    """``spec`` with the reference's input size: same device, backend, threads and timing."""
    return dataclasses.replace(spec, height=REFERENCE_SIZE, width=REFERENCE_SIZE)


@dataclass(frozen=True)
class Calibration:
    """The reference's latency timed alone on a quiet machine: what a ratio is multiplied by.

    >>> calibration = Calibration(3.1, LatencySpec(backend="eager"), hardware="cpu: test")
    >>> Calibration.from_dict(calibration.to_dict()) == calibration
    True
    """

    reference_ms: float
    spec: LatencySpec
    hardware: str = ""
    measured_at: float = 0.0  # Unix time

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "spec": self.spec.to_dict(), "reference": REFERENCE_NAME}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        fields = dict(check_keys("calibration", data, ["reference_ms", "spec", "hardware", "measured_at", "reference"]))
        fields.pop("reference", None)
        return cls(**{**fields, "spec": LatencySpec.from_dict(fields["spec"])})


def calibrate(spec: LatencySpec, lock: DeviceLock | None = None, bursts: int = CALIBRATION_BURSTS) -> Calibration:
    """Time the reference alone under ``spec`` (its own input size), holding ``lock`` exclusively while timing.

    The reference is timed ``bursts`` times, :data:`CALIBRATION_PAUSE_S` apart (at most
    ``spec.min_seconds``: a quick spec of tests does not wait), and the fastest median
    counts: a passing load (a process starting, a cache being written) slows one burst,
    not all, and a slow calibration would inflate every judged latency of the run
    (seen: 2.43 ms against 1.58 ms, judged latencies 30-40% high).
    """
    benchmark = Benchmark(reference_model(), reference_spec(spec), peak_memory=False)
    medians = []
    for burst in range(bursts):
        if burst:
            time.sleep(min(CALIBRATION_PAUSE_S, spec.min_seconds))
        medians.append(benchmark.run(lock).median_ms)
    return Calibration(min(medians), reference_spec(spec), hardware_name(spec.device), time.time())


def quietest(calibrations: Sequence[Calibration], spec: LatencySpec, hardware: str) -> Calibration | None:
    """Of a run's calibrations (one per start and resume), the fastest taken under ``spec`` on ``hardware``.

    A resume on a busy machine then does not make the rest of the run judge high; one
    on other hardware or under another spec (another thread count) never counts.
    """
    same = [c for c in calibrations if c.spec == reference_spec(spec) and c.hardware == hardware]
    return min(same, key=lambda c: c.reference_ms, default=None)


def _ratio(candidate: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(candidate, axis=axis) / np.median(reference, axis=axis)


def _judged_stats(
    runs: Sequence[list[float]], reference_runs: Sequence[list[float]], base: LatencyStats, calibration: Calibration
) -> LatencyStats:
    """``base`` (the candidate's raw statistics) with the ratio, its bootstrap interval and the calibration."""
    candidate_blocks = np.array([np.median(block) for block in runs])
    reference_blocks = np.array([np.median(block) for block in reference_runs])
    ratio = float(_ratio(candidate_blocks, reference_blocks))
    interval = scipy_stats.bootstrap(
        (candidate_blocks, reference_blocks),
        _ratio,
        paired=True,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=0,
    ).confidence_interval
    low, high = float(interval.low), float(interval.high)
    return dataclasses.replace(
        base,
        reference_ms=calibration.reference_ms,
        reference_median_ms=float(np.median(np.concatenate(reference_runs))),
        ratio=ratio,
        ratio_low=min(low, ratio),
        ratio_high=max(high, ratio),
    )


def _raw_stats(runs: Sequence[list[float]], spec: LatencySpec, peak_memory_mb: float | None) -> LatencyStats:
    times = np.concatenate(runs)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return LatencyStats(float(median), float(p10), float(p90), float(times.mean()), len(times), spec, peak_memory_mb)


def interleave(
    candidates: Sequence[Benchmark],
    reference: Benchmark,
    calibration: Calibration,
    seconds: float,
    lock: DeviceLock | None = None,
) -> list[LatencyStats]:
    """Time every candidate against the reference in rounds, each round a turn of every candidate then of the
    reference; at least :data:`MIN_ROUNDS` rounds and ``seconds`` in all. One judged record per candidate.

    A turn lasts ``seconds / (MIN_ROUNDS x turns per round)``, at most :data:`SEGMENT_SECONDS`,
    its first :data:`SETTLE_FRACTION` left out. Several candidates (a front's points) share
    the rounds, so a slow stretch of the host touches them all alike. ``lock`` is held
    exclusively for the whole measurement.
    """
    spec = reference.spec
    turn = min(SEGMENT_SECONDS, max(seconds, 1e-3) / (MIN_ROUNDS * (len(candidates) + 1)))
    settle = SETTLE_FRACTION * turn
    runs: list[list[list[float]]] = [[] for _ in candidates]
    reference_runs: list[list[float]] = []
    with timing_context(spec, lock):
        for benchmark in (*candidates, reference):
            benchmark.warm_up()
        started = time.perf_counter()
        while len(reference_runs) < MIN_ROUNDS or time.perf_counter() - started < seconds:
            for index, benchmark in enumerate(candidates):
                runs[index].append(benchmark.segment(turn, settle))
            # The reference is timed once per round and paired with every candidate's turn of that round.
            reference_runs.append(reference.segment(turn, settle))
    return [
        _judged_stats(blocks, reference_runs, _raw_stats(blocks, bench.spec, bench.peak_memory_mb), calibration)
        for blocks, bench in zip(runs, candidates, strict=True)
    ]


def measure_judged(
    model: nn.Module,
    spec: LatencySpec,
    calibration: Calibration,
    lock: DeviceLock | None = None,
    *,
    seconds: float | None = None,
    reference: nn.Module | None = None,
) -> LatencyStats:
    """The latency of ``model`` under ``spec``, judged against the reference: raw statistics, ratio, interval.

    ``seconds`` defaults to ``spec.min_seconds``; ``reference`` to :func:`reference_model`
    (another module only in examples and tests).
    """
    candidate = Benchmark(model, spec)
    base = reference if reference is not None else reference_model()
    ref_spec = reference_spec(spec) if reference is None else spec
    timed = Benchmark(base, ref_spec, peak_memory=False)
    return interleave([candidate], timed, calibration, spec.min_seconds if seconds is None else seconds, lock)[0]
