"""The one timing loop: :class:`Benchmark` times whole models and single blocks alike.

A :class:`Benchmark` copies a model, prepares it under the spec's backend (see
:mod:`mvit_nas.latency.backends`) and measures its peak memory once; each
:meth:`Benchmark.run` warms up and times until the spec's repeats and seconds
are reached (CUDA events on the GPU, ``perf_counter`` otherwise), groups the
runs into short windows and leaves out windows that other work on the machine
slowed (:func:`_quiet_runs`). :func:`measure` and :func:`measure_config` are the
one-shot forms.

Example:

>>> from mvit_nas.latency import measure, resolve_spec
>>> spec = resolve_spec(device="cpu", backend="eager", height=32, threads=1, warmup=1, min_repeats=5, min_seconds=0)
>>> stats = measure(torch.nn.Conv2d(3, 4, 1), spec)
>>> stats.n >= 5 and stats.p10_ms <= stats.median_ms <= stats.p90_ms
True
"""

from __future__ import annotations

import copy
import gc
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import nn

from mvit_nas.config import ArchConfig
from mvit_nas.latency.backends import prepare
from mvit_nas.latency.lock import DeviceLock
from mvit_nas.latency.onnx import IMAGE_CHANNELS
from mvit_nas.latency.spec import DTYPES, LatencySpec, LatencyStats, check_available
from mvit_nas.model import build_model
from mvit_nas.validate import InputError, check_int, shown

# Timed runs are grouped into windows of at least this long and this many runs; a window whose
# median is over QUIET_TOLERANCE x the lower quartile of the window medians was slowed by other
# work on the machine (the quartile, not the fastest window, so that one lucky window sets nothing).
WINDOW_SECONDS = 0.05
WINDOW_MIN_RUNS = 10
MIN_WINDOWS = 5  # with fewer windows every run is kept: too few to tell interference from noise
QUIET_TOLERANCE = 1.10
_MIB = 2**20


# --- process state held still while timing --------------------------------------------


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # As timeit does: a collection in the middle of a run is noise, not the model's latency.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _pinned(threads: int) -> Iterator[None]:
    """Keep this thread (and the threads it starts) on ``threads`` fixed cores of those it may use, where the OS
    allows: a measurement's threads then do not migrate between cores mid-run. The last cores are chosen, as
    processes started later tend to be placed on the first ones."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[-threads:])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@contextmanager
def timing_context(spec: LatencySpec, lock: DeviceLock | None = None) -> Iterator[None]:
    """What every timed run holds: the device lock (if given), the spec's threads pinned, no autograd, no GC."""
    exclusive = lock.exclusive() if lock is not None else nullcontext()
    with exclusive, _pinned(spec.threads), _torch_threads(spec.threads), torch.inference_mode(), _gc_paused():
        yield


# --- peak memory -----------------------------------------------------------------------


@contextmanager
def _fd2_silenced() -> Iterator[None]:
    """Kineto writes start/stop banners straight to file descriptor 2, past ``sys.stderr``."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _transient_peak_bytes(forward: Callable[[], object], device: str) -> int:
    """Most bytes allocated at once during ``forward`` beyond what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # The CPU allocator keeps no statistics; the profiler sees every allocation and free, in order.
    from torch.profiler import ProfilerActivity, profile

    with _fd2_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward()
    events = prof.profiler.kineto_results.events()
    changes = sorted((event.start_ns(), -event.nbytes()) for event in events if event.name() == "[memory]")
    # Sorted by time, allocations before frees at the same instant; the running sum's maximum is the peak.
    return max(itertools.accumulate((-negated for _, negated in changes), initial=0))


def _resident_bytes(model: nn.Module, x: torch.Tensor) -> int:
    tensors = itertools.chain(model.parameters(), model.buffers(), (x,))
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# --- the timing loop -------------------------------------------------------------------


class Benchmark:
    """A model made ready to time under one spec: copied, exported / compiled / captured once.

    The input is a random tensor of shape ``(spec.batch_size, *sample_shape)``;
    ``sample_shape`` (channels, height, width) defaults to an image,
    ``(3, spec.height, spec.width)``, and is a feature map when one block of a
    network is timed alone. Preparation (and, unless ``peak_memory=False``, the
    peak-memory pass) happen here, outside any lock; each :meth:`run` warms up and
    times, and may be called repeatedly, e.g. to interleave two models round by
    round. The caller's model is not modified.

    Example::

        ours, theirs = Benchmark(model_a, spec), Benchmark(model_b, spec)
        rounds = [(ours.run().median_ms, theirs.run().median_ms) for _ in range(5)]
        block = Benchmark(block_module(mv2_block), spec, sample_shape=(32, 64, 64), peak_memory=False)
    """

    def __init__(
        self,
        model: nn.Module,
        spec: LatencySpec,
        sample_shape: tuple[int, int, int] | None = None,
        *,
        peak_memory: bool = True,
    ) -> None:
        check_available(spec)
        shape = (IMAGE_CHANNELS, spec.height, spec.width) if sample_shape is None else tuple(sample_shape)
        if len(shape) != 3:
            raise InputError("sample_shape", f"must be (channels, height, width), got {shown(shape)}")
        for size in shape:
            check_int("sample_shape", size, 1)
        self.spec = spec
        dtype = DTYPES[spec.dtype]
        self._model = copy.deepcopy(model).to(device=spec.device, dtype=dtype).eval()
        # A private generator: measuring must not move the caller's random stream (seeded training).
        generator = torch.Generator().manual_seed(0)
        self._input = torch.randn((spec.batch_size, *shape), generator=generator).to(device=spec.device, dtype=dtype)
        with _pinned(spec.threads), _torch_threads(spec.threads):  # pool threads start on the pinned cores
            self._prepared = prepare(self._model, self._input, spec)
            self.peak_memory_mb = self._peak_memory_mb() if peak_memory else None

    def _peak_memory_mb(self) -> float | None:
        forward = self._prepared.forward
        if forward is None:
            return None
        with torch.inference_mode():
            transient = _transient_peak_bytes(forward, self.spec.device)
        return (transient + _resident_bytes(self._model, self._input)) / _MIB

    def _timer(self) -> Callable[[], float]:
        run = self._prepared.run
        if self.spec.device == "cuda" and self.spec.backend != "onnxruntime":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def cuda_timed() -> float:
                start.record()
                run()
                end.record()
                end.synchronize()
                return start.elapsed_time(end)

            return cuda_timed

        # ONNX Runtime's run returns once its work is done (it synchronises its own CUDA stream).
        def host_timed() -> float:
            begin = time.perf_counter()
            run()
            return (time.perf_counter() - begin) * 1e3

        return host_timed

    def _time(self) -> tuple[list[float], list[int]]:
        """Warm up, then time runs (milliseconds) until the spec is satisfied; the runs and where windows start."""
        spec = self.spec
        timed = self._timer()
        samples: list[float] = []
        window_starts = [0]
        self.warm_up()
        started = window_started = time.perf_counter()
        while len(samples) < spec.max_repeats:
            samples.append(timed())
            now = time.perf_counter()
            if now - window_started >= WINDOW_SECONDS and len(samples) - window_starts[-1] >= WINDOW_MIN_RUNS:
                window_starts.append(len(samples))
                window_started = now
            if len(samples) < spec.min_repeats or now - started < spec.min_seconds:
                continue
            kept = _quiet_runs(samples, window_starts)
            if 2 * len(kept) >= len(samples) or now - started >= 3 * spec.min_seconds:
                break
        return samples, window_starts

    def warm_up(self) -> None:
        """The spec's warm-up runs (call inside :func:`timing_context`)."""
        for _ in range(self.spec.warmup):
            self._prepared.run()
        if self.spec.device == "cuda":
            torch.cuda.synchronize()

    def segment(self, seconds: float, settle: float) -> list[float]:
        """Timed runs (milliseconds) for ``seconds``, less those that started in the first ``settle`` seconds.

        One turn of an interleaved measurement. Right after another model ran, a model
        runs slower for tens of milliseconds (a small model after a large one: up to 25%
        for a whole block of 5 runs here), so each turn lasts long enough to leave that
        out. At least the last run is kept, however slow the model.
        """
        timed = self._timer()
        runs: list[float] = []
        started = time.perf_counter()
        while True:
            begin = time.perf_counter() - started
            value = timed()
            if begin >= settle:
                runs.append(value)
            if time.perf_counter() - started >= seconds:
                return runs or [value]

    def run(self, lock: DeviceLock | None = None) -> LatencyStats:
        """Warm up, then time until both ``min_repeats`` and ``min_seconds`` are reached (at most ``max_repeats``).

        With ``lock``, warm-up and timing hold ``lock.exclusive()``. The timed runs are
        grouped into short windows. On a shared machine, other work (another tenant of
        the host, a burst of I/O) slows whole stretches of seconds, up to 3x here;
        windows whose median is over :data:`QUIET_TOLERANCE` x the lower quartile of
        the window medians are left out of the statistics (counted in ``discarded``),
        and if they are the majority, timing goes on (up to 3x ``min_seconds``) to
        find quiet ones.
        """
        with timing_context(self.spec, lock):
            samples, window_starts = self._time()
        kept = _quiet_runs(samples, window_starts)
        times = np.asarray(kept)
        p10, median, p90 = np.percentile(times, [10, 50, 90])
        return LatencyStats(
            median_ms=float(median),
            p10_ms=float(p10),
            p90_ms=float(p90),
            mean_ms=float(times.mean()),
            n=len(kept),
            spec=self.spec,
            peak_memory_mb=self.peak_memory_mb,
            discarded=len(samples) - len(kept),
        )


def _quiet_runs(samples: list[float], window_starts: list[int]) -> list[float]:
    """The runs of the windows that other work did not slow (all runs if there are too few windows).

    >>> quiet, slowed = [1.0] * 4, [3.0] * 4
    >>> windows = [quiet, quiet, slowed, quiet, quiet, quiet]
    >>> len(_quiet_runs([run for window in windows for run in window], [0, 4, 8, 12, 16, 20]))
    20
    """
    bounds = [start for start in window_starts if start < len(samples)]
    windows = [samples[start:end] for start, end in zip(bounds, [*bounds[1:], len(samples)], strict=True)]
    if len(windows) > 1 and len(windows[-1]) < WINDOW_MIN_RUNS:  # a short tail joins the window before it
        windows[-2:] = [windows[-2] + windows[-1]]
    if len(windows) < MIN_WINDOWS:
        return list(samples)
    medians = [float(np.median(window)) for window in windows]
    reference = float(np.percentile(medians, 25))
    return [
        run
        for window, median in zip(windows, medians, strict=True)
        if median <= QUIET_TOLERANCE * reference
        for run in window
    ]


def measure(model: nn.Module, spec: LatencySpec, lock: DeviceLock | None = None) -> LatencyStats:
    """Latency of ``model`` (eval mode, a random image of the spec's shape) under ``spec``.

    With ``lock``, warm-up and timing hold ``lock.exclusive()`` (export and compilation
    do not). The model is copied, never modified.

    Example::

        stats = measure(build_model(preset("xxs")), resolve_spec(device="cpu", backend="eager"))
    """
    return Benchmark(model, spec).run(lock)


def measure_config(cfg: ArchConfig, spec: LatencySpec, lock: DeviceLock | None = None) -> LatencyStats:
    """Latency of the model ``cfg`` describes (fresh weights: latency does not depend on them).

    The input size is the spec's, not ``cfg.resolution``.

    Example::

        cfg = preset("xs")
        stats = measure_config(cfg, resolve_spec(height=cfg.resolution))
    """
    return measure(build_model(cfg), spec, lock)
