"""Reference-normalised latency: a candidate timed in alternation with a ladder of fixed reference models.

On a shared machine a model's raw median moves with whatever else runs (the same
model measured up to 1.65x apart between processes here), but a slow stretch
slows a second model timed in the same seconds too. So every judged measurement
alternates turns of the candidate with turns of the references, and the latency a
budget is judged on is ``ratio x calibrated reference``: the ratio of the medians,
times the reference's latency timed once, quietly, when the run starts
(:func:`calibrate`). The ratio's 95% interval is a paired bootstrap over the
rounds (``scipy.stats.bootstrap``); the candidate's own raw statistics are kept
beside it.

Why a ladder (:data:`REFERENCES`, about 1.7, 6.5 and 20 ms at 1 thread here) and
not one reference: a slow stretch does not slow every model alike. On this 2-core
VM the host's load slowed MobileViT-XXS at 128 px by up to 67% for seconds at a
time while XXS at 256 px slowed 35% and S at 256 px 26% (log-log slopes of XXS, XS
and S at 256 px against the small reference 0.67, 0.55 and 0.44, r >= 0.98 over
10 processes): a ratio to a model 10x smaller over-corrects. The candidate is
therefore judged against the two references that bracket it, interpolated in log
latency (:func:`_bracketed`). Over 6 processes idle and 6 with a busy core, the
cross-process spread of six configs (xxs@160 to s@256) fell from 12-31% idle and
4-17% busy (one reference) to 6-14% and 2-11%, and busy-vs-idle from up to 8% to
3%. It does not fall to nothing: at equal latency the host slows some
architectures more than others (XXS at 256 px 35% where S at 128 px, as fast,
slowed 25%).

A turn is a stretch of time, not a count of runs: a model timed right after
another runs slower for tens of milliseconds, more so a small model after a
large one. With turns of 5 runs the reference ran 15-28% slower than alone and
judged latencies came out up to 20% low for large candidates; with turns of
:data:`SEGMENT_SECONDS` whose first quarter is left out, judged latencies were
within 3% of each model timed alone (xxs@96 to xs@256, 2-core EPYC).

Example:

>>> from mvit_nas.latency import resolve_spec
>>> spec = resolve_spec(device="cpu", backend="eager", height=32, threads=1, warmup=1, min_repeats=5, min_seconds=0)
>>> small = Calibration(reference_ms={"conv3x3": 1.0}, spec=spec)
>>> stats = measure_judged(torch.nn.Conv2d(3, 4, 1), spec, small, references={"conv3x3": torch.nn.Conv2d(3, 4, 3)})
>>> stats.ratio_low <= stats.ratio <= stats.ratio_high and stats.judged_ms == stats.ratio * 1.0
True
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
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

REFERENCES = ("xxs@128", "xs@160", "s@224")  # the ladder, "preset@input size", fastest first
SEGMENT_SECONDS = 0.2  # one turn of a model, at most: short enough that all see the same seconds of the host
SETTLE_FRACTION = 0.25  # the start of a turn left out: the model is still slowed by the one before it
MIN_ROUNDS = 5  # rounds of (candidate turns, reference turns), at least, however short the measurement
CALIBRATION_BURSTS = 3  # a calibration times the references this many times, a pause apart; the fastest counts
CALIBRATION_PAUSE_S = 1.0
CONFIDENCE = 0.95
RESAMPLES = 999


def _preset_and_size(name: str) -> tuple[str, int]:
    variant, _, size = name.partition("@")
    return variant, int(size)


def reference_model(name: str) -> nn.Module:
    """The reference ``name`` of :data:`REFERENCES`, e.g. ``"xxs@128"``: that preset at that input size."""
    variant, size = _preset_and_size(name)
    return build_model(dataclasses.replace(preset(variant), resolution=size))


def reference_spec(spec: LatencySpec, name: str = REFERENCES[0]) -> LatencySpec:
    """``spec`` at the input size of reference ``name``: same device, backend, threads and timing."""
    size = _preset_and_size(name)[1]
    return dataclasses.replace(spec, height=size, width=size)


@dataclass(frozen=True)
class Calibration:
    """The references' latencies timed alone on a quiet machine: what a ratio is multiplied by.

    ``reference_ms`` maps each reference's name to its latency, fastest first; ``spec`` is
    the spec they were timed under (at the first one's input size).

    >>> calibration = Calibration({"xxs@128": 1.6, "xs@160": 6.5}, LatencySpec(backend="eager"), hardware="cpu: test")
    >>> Calibration.from_dict(calibration.to_dict()) == calibration
    True
    """

    reference_ms: dict[str, float]
    spec: LatencySpec
    hardware: str = ""
    measured_at: float = 0.0  # Unix time

    @property
    def quickest_ms(self) -> float:
        """The fastest reference's latency: the one a busy machine slows most, so the one to compare quietness by."""
        return min(self.reference_ms.values())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        fields = dict(check_keys("calibration", data, ["reference_ms", "spec", "hardware", "measured_at", "reference"]))
        single = fields.pop("reference", REFERENCES[0])  # runs from before the ladder: one reference, one number
        if not isinstance(fields["reference_ms"], dict):
            fields["reference_ms"] = {single: float(fields["reference_ms"])}
        return cls(**{**fields, "spec": LatencySpec.from_dict(fields["spec"])})


def calibrate(spec: LatencySpec, lock: DeviceLock | None = None, bursts: int = CALIBRATION_BURSTS) -> Calibration:
    """Time each reference alone under ``spec`` (at its own input size), holding ``lock`` exclusively while timing.

    The references are timed ``bursts`` times, :data:`CALIBRATION_PAUSE_S` apart (at most
    ``spec.min_seconds``: a quick spec of tests does not wait), and each one's fastest
    median counts: a passing load (a process starting, a cache being written) slows one
    burst, not all, and a slow calibration would inflate every judged latency of the run
    (seen: 2.43 ms against 1.58 ms, judged latencies 30-40% high).
    """
    benchmarks = {
        name: Benchmark(reference_model(name), reference_spec(spec, name), peak_memory=False) for name in REFERENCES
    }
    fastest = dict.fromkeys(REFERENCES, math.inf)
    for burst in range(bursts):
        if burst:
            time.sleep(min(CALIBRATION_PAUSE_S, spec.min_seconds))
        for name, benchmark in benchmarks.items():
            fastest[name] = min(fastest[name], benchmark.run(lock).median_ms)
    return Calibration(fastest, reference_spec(spec), hardware_name(spec.device), time.time())


def quietest(calibrations: Sequence[Calibration], spec: LatencySpec, hardware: str) -> Calibration | None:
    """Of a run's calibrations (one per start and resume), the fastest taken under ``spec`` on ``hardware``.

    A resume on a busy machine then does not make the rest of the run judge high; one
    on other hardware or under another spec (another thread count) never counts.
    """
    same = [c for c in calibrations if c.spec == reference_spec(spec) and c.hardware == hardware]
    return min(same, key=lambda c: c.quickest_ms, default=None)


_LADDERS: dict[tuple[str, LatencySpec], Benchmark] = {}


def ladder(spec: LatencySpec, calibration: Calibration) -> dict[str, Benchmark]:
    """The calibration's references made ready to time under ``spec``, by name; kept for the process's life.

    A worker judges every trial against the same references: exporting them once, not
    per trial, keeps the device-exclusive part of a trial short.
    """
    out = {}
    for name in calibration.reference_ms:
        key = (name, reference_spec(spec, name))
        if key not in _LADDERS:
            _LADDERS[key] = Benchmark(reference_model(name), key[1], peak_memory=False)
        out[name] = _LADDERS[key]
    return out


def _ratio(candidate: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(candidate, axis=axis) / np.median(reference, axis=axis)


def _bracketed(
    candidate: np.ndarray, references: Mapping[str, np.ndarray], calibration: Calibration
) -> tuple[np.ndarray, float]:
    """The reference a candidate is judged against: per round, and its calibrated latency.

    The two references whose medians (in the same rounds) bracket the candidate's, mixed
    geometrically by where the candidate sits between them in log latency; below the
    fastest or above the slowest, that one alone. With one reference, that one.

    Calibrated at 1 and 4 ms, both running 20% slow; a candidate halfway between them (2.4 ms
    now) is judged by a reference of 2.4 ms now, calibrated 2 ms, so at 2 ms:

    >>> slow = {"a": np.full(3, 1.2), "b": np.full(3, 4.8)}
    >>> blocks, ms = _bracketed(np.full(3, 2.4), slow, Calibration({"a": 1.0, "b": 4.0}, LatencySpec()))
    >>> round(float(blocks[0]), 3), round(ms, 3)
    (2.4, 2.0)
    """
    names = sorted(references, key=lambda name: calibration.reference_ms[name])
    logs = [math.log(float(np.median(references[name]))) for name in names]
    position = math.log(float(np.median(candidate)))
    lower = max(0, min(len(names) - 2, sum(value <= position for value in logs) - 1))
    upper = min(lower + 1, len(names) - 1)
    span = logs[upper] - logs[lower]
    weight = min(1.0, max(0.0, (position - logs[lower]) / span)) if span > 0 else 0.0
    low, high = names[lower], names[upper]
    blocks = references[low] ** (1 - weight) * references[high] ** weight
    reference_ms = calibration.reference_ms[low] ** (1 - weight) * calibration.reference_ms[high] ** weight
    return blocks, float(reference_ms)


def _judged_stats(
    candidate_blocks: np.ndarray, reference_blocks: np.ndarray, base: LatencyStats, reference_ms: float
) -> LatencyStats:
    """``base`` (the candidate's raw statistics) with the ratio, its bootstrap interval and the reference's latency."""
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
        reference_ms=reference_ms,
        reference_median_ms=float(np.median(reference_blocks)),
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
    references: Mapping[str, Benchmark],
    calibration: Calibration,
    seconds: float,
    lock: DeviceLock | None = None,
) -> list[LatencyStats]:
    """Time every candidate against the references in rounds, each round a turn of every candidate then of every
    reference; at least :data:`MIN_ROUNDS` rounds and ``seconds`` in all. One judged record per candidate.

    ``references`` are the calibration's, by name. A turn lasts ``seconds / (MIN_ROUNDS x turns
    per round)``, at most :data:`SEGMENT_SECONDS`, its first :data:`SETTLE_FRACTION` left out.
    Several candidates (a front's points) share the rounds, so a slow stretch of the host
    touches them all alike. ``lock`` is held exclusively for the whole measurement.
    """
    spec = next(iter(references.values())).spec
    turn = min(SEGMENT_SECONDS, max(seconds, 1e-3) / (MIN_ROUNDS * (len(candidates) + len(references))))
    settle = SETTLE_FRACTION * turn
    runs: list[list[list[float]]] = [[] for _ in candidates]
    reference_runs: dict[str, list[float]] = {name: [] for name in references}
    with timing_context(spec, lock):
        for benchmark in (*candidates, *references.values()):
            benchmark.warm_up()
        started = time.perf_counter()
        rounds = 0
        while rounds < MIN_ROUNDS or time.perf_counter() - started < seconds:
            for index, benchmark in enumerate(candidates):
                runs[index].append(benchmark.segment(turn, settle))
            # Each reference is timed once per round and paired with every candidate's turn of that round.
            for name, benchmark in references.items():
                reference_runs[name].append(float(np.median(benchmark.segment(turn, settle))))
            rounds += 1
    reference_blocks = {name: np.array(blocks) for name, blocks in reference_runs.items()}
    judged = []
    for blocks, bench in zip(runs, candidates, strict=True):
        candidate_blocks = np.array([np.median(block) for block in blocks])
        effective, reference_ms = _bracketed(candidate_blocks, reference_blocks, calibration)
        base = _raw_stats(blocks, bench.spec, bench.peak_memory_mb)
        judged.append(_judged_stats(candidate_blocks, effective, base, reference_ms))
    return judged


def measure_judged(
    model: nn.Module,
    spec: LatencySpec,
    calibration: Calibration,
    lock: DeviceLock | None = None,
    *,
    seconds: float | None = None,
    references: Mapping[str, nn.Module] | None = None,
) -> LatencyStats:
    """The latency of ``model`` under ``spec``, judged against the references: raw statistics, ratio, interval.

    ``seconds`` defaults to ``spec.min_seconds``; ``references`` to the calibration's
    (:func:`ladder`); other modules, timed at ``spec``'s input size, only in examples and tests.
    """
    candidate = Benchmark(model, spec)
    if references is None:
        timed = ladder(spec, calibration)
    else:
        timed = {name: Benchmark(module, spec, peak_memory=False) for name, module in references.items()}
    return interleave([candidate], timed, calibration, spec.min_seconds if seconds is None else seconds, lock)[0]
