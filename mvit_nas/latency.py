"""Latency of a model on one device and backend, measured with the device to itself.

A :class:`LatencySpec` names everything a latency figure depends on (device,
backend, batch size, input size, dtype, CPU threads, how long to time); every
:class:`LatencyStats` carries its spec, so a record says how it was taken.

Backends:

- ``onnxruntime`` (CPU default): the model is exported to ONNX with a fixed
  batch and run by an ONNX Runtime session (CPU provider, ``threads`` intra-op
  threads, sequential, full graph optimisation; the CUDA provider on ``cuda``).
  Eager PyTorch at batch 1 on a CPU is bound by per-operator overhead, so its
  figures reflect the framework more than the architecture; ONNX Runtime's
  fused graph is what a deployment runs and what an architecture search should
  rank by.
- ``eager``: the PyTorch module as is (CPU: ``perf_counter``; CUDA: CUDA events).
- ``cudagraph`` (CUDA default): the forward captured once in a CUDA graph and
  replayed, which removes the kernel-launch overhead that dominates batch-1
  eager latency on a GPU.
- ``compile``: ``torch.compile`` (Inductor); an :class:`InputError` if it cannot
  compile on this machine.

:func:`measure` / :func:`measure_config` time one model; :class:`Benchmark` keeps a
prepared model to time it repeatedly (interleaved comparisons); :class:`DeviceLock`
keeps training off the device while a measurement runs; :func:`export_onnx` is the
project's one ONNX exporter.

Example::

    spec = resolve_spec(device="cpu", backend="onnxruntime", height=256)
    stats = measure_config(preset("xxs"), spec)
    print(stats.median_ms, stats.p10_ms, stats.p90_ms, stats.n)
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import gc
import itertools
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mvit_nas.config import MAX_RESOLUTION, MIN_RESOLUTION, ArchConfig
from mvit_nas.errors import InputError
from mvit_nas.model import build_model

DEVICES = ("cpu", "cuda")
BACKENDS = ("eager", "onnxruntime", "cudagraph", "compile")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
DEFAULT_BACKEND = {"cpu": "onnxruntime", "cuda": "cudagraph"}
MAX_BATCH = 1024
MAX_THREADS = 1024
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_MIB = 2**20


def _check_int(field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(field, f"must be an integer in [{low}, {high}], got {value!r}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(field, f"must be one of {', '.join(choices)}, got {value!r}")


def _reject_unknown(data: Any, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise InputError("latency", f"must be a mapping of fields, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise InputError(key, f"unknown key; allowed keys are {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class LatencySpec:
    """How a latency is measured; validated on creation (field names in errors are CLI flags).

    Example::

        spec = LatencySpec(device="cpu", backend="eager", height=128, width=128)
        assert LatencySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    """

    device: str = "cpu"
    backend: str = "onnxruntime"
    batch_size: int = 1
    height: int = 256
    width: int = 256
    dtype: str = "float32"
    threads: int = 2
    warmup: int = 10
    min_repeats: int = 30
    min_seconds: float = 1.0
    max_repeats: int = 1000

    def __post_init__(self) -> None:
        _check_choice("--device", self.device, DEVICES)
        _check_choice("--backend", self.backend, BACKENDS)
        _check_int("--batch-size", self.batch_size, 1, MAX_BATCH)
        _check_int("--resolution", self.height, MIN_RESOLUTION, MAX_RESOLUTION)
        _check_int("--resolution", self.width, MIN_RESOLUTION, MAX_RESOLUTION)
        _check_choice("--dtype", self.dtype, tuple(DTYPES))
        _check_int("--threads", self.threads, 1, MAX_THREADS)
        _check_int("warmup", self.warmup, 0, 1_000_000)
        _check_int("min_repeats", self.min_repeats, 1, 1_000_000)
        _check_int("max_repeats", self.max_repeats, self.min_repeats, 1_000_000)
        seconds = self.min_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise InputError("min_seconds", f"must be a number of seconds in [0, 3600], got {seconds!r}")
        if self.dtype == "float16" and self.device != "cuda":
            raise InputError("--dtype", "float16 is only measured on --device cuda; use float32 on cpu")
        if self.backend == "cudagraph" and self.device != "cuda":
            raise InputError("--backend", "cudagraph needs --device cuda; on cpu use onnxruntime, eager or compile")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySpec:
        _reject_unknown(data, {field.name for field in dataclasses.fields(cls)})
        return cls(**data)


_STAT_KEYS = {"median": "median_ms", "p10": "p10_ms", "p90": "p90_ms", "mean": "mean_ms", "n": "n"}
# Timed runs are grouped into windows of at least this long and this many runs; a window whose
# median is over QUIET_TOLERANCE x the lower quartile of the window medians was slowed by other
# work on the machine (the quartile, not the fastest window, so that one lucky window sets nothing).
WINDOW_SECONDS = 0.05
WINDOW_MIN_RUNS = 10
MIN_WINDOWS = 5  # with fewer windows every run is kept: too few to tell interference from noise
QUIET_TOLERANCE = 1.10


@dataclass(frozen=True)
class LatencyStats:
    """Latency in milliseconds over ``n`` timed runs, with the spec it was measured under.

    ``peak_memory_mb`` is the peak tensor memory of one forward pass: the model's
    parameters and buffers, the input, and the most intermediate memory alive at
    once (on CUDA from ``torch.cuda.max_memory_allocated``; on CPU from every
    allocation and free the PyTorch profiler records, scratch buffers inside
    kernels included). ``None`` for ``onnxruntime``, whose arena is outside
    PyTorch's view and whose process RSS would not isolate this model.

    Example::

        stats.to_dict()  # {"median": 3.1, "p10": 3.0, "p90": 3.4, "mean": 3.2, "n": 300, "device": "cpu", ...}
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    n: int
    spec: LatencySpec
    peak_memory_mb: float | None
    discarded: int = 0  # timed runs left out: their window was slowed by other work on the machine

    def to_dict(self) -> dict[str, Any]:
        stats = {key: getattr(self, name) for key, name in _STAT_KEYS.items()}
        return {**stats, **self.spec.to_dict(), "peak_memory_mb": self.peak_memory_mb, "discarded": self.discarded}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        spec_fields = {field.name for field in dataclasses.fields(LatencySpec)}
        _reject_unknown(data, spec_fields | set(_STAT_KEYS) | {"peak_memory_mb", "discarded"})
        for key in _STAT_KEYS:
            if key not in data:
                raise InputError(key, "is required")
        spec = LatencySpec.from_dict({key: value for key, value in data.items() if key in spec_fields})
        stats = {name: data[key] for key, name in _STAT_KEYS.items()}
        return cls(**stats, spec=spec, peak_memory_mb=data.get("peak_memory_mb"), discarded=data.get("discarded", 0))


def _available_threads() -> int:
    # The affinity mask, not the machine's core count, is what this process may use (containers, Ray workers).
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_available(spec: LatencySpec) -> None:
    """Raise if this machine cannot run ``spec`` (a spec read back from a record may come from another one)."""
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device",
            "CUDA was requested but torch.cuda.is_available() is False on this machine; use --device cpu or auto",
        )
    if spec.backend == "onnxruntime" and spec.device == "cuda":
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            raise InputError(
                "--backend",
                "onnxruntime on cuda needs the CUDAExecutionProvider (install onnxruntime-gpu); "
                f"this onnxruntime has {', '.join(providers)}. Use --backend cudagraph, eager or compile",
            )


def resolve_spec(
    device: str = "auto",
    backend: str = "auto",
    batch_size: int = 1,
    height: int = 256,
    width: int | None = None,
    dtype: str = "float32",
    threads: int | None = None,
    **timing: Any,
) -> LatencySpec:
    """Turn user choices (``auto`` allowed) into a checked :class:`LatencySpec` for this machine.

    ``device="auto"`` is ``cuda`` when available, else ``cpu``; ``backend="auto"`` is
    ``onnxruntime`` on CPU and ``cudagraph`` on CUDA; ``width`` defaults to ``height``;
    ``threads`` to the CPUs this process may use. ``timing`` sets ``warmup``,
    ``min_repeats``, ``min_seconds`` or ``max_repeats``. Raises :class:`InputError`
    naming the flag, and never falls back silently (``--device cuda`` without CUDA is an error).

    Example::

        spec = resolve_spec(device="cpu", height=128, min_seconds=0.2)
        spec.backend  # "onnxruntime"
    """
    _check_choice("--device", device, ("auto", *DEVICES))
    _check_choice("--backend", backend, ("auto", *BACKENDS))
    timing_fields = {"warmup", "min_repeats", "min_seconds", "max_repeats"}
    _reject_unknown(timing, timing_fields)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = LatencySpec(
        device=device,
        backend=DEFAULT_BACKEND[device] if backend == "auto" else backend,
        batch_size=batch_size,
        height=height,
        width=height if width is None else width,
        dtype=dtype,
        threads=_available_threads() if threads is None else threads,
        **timing,
    )
    _check_available(spec)
    return spec


# --- ONNX ------------------------------------------------------------------------------


def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int,
    width: int,
    batch_size: int = 1,
    *,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export ``model`` in eval mode (each module's training flag is restored after) to one ONNX file.

    Input ``input`` of shape (batch, 3, height, width) on the model's device and dtype,
    output ``logits``; opset 18. With ``dynamic_batch`` the batch axis is symbolic,
    otherwise fixed at ``batch_size`` (ONNX Runtime then folds every shape computation
    and fuses MatMul+Add into Gemm: faster, so latency measurement uses it).

    The default is the TorchScript exporter (``dynamo=False``): on torch 2.14 and a
    2-core CPU it exports a MobileViT in 2-3 s, the ``torch.export``-based exporter
    in 15-20 s (most of it decompositions), and once ONNX Runtime has optimised
    them the two graphs hold the same fused operators (Conv, Gemm, FusedMatMul,
    Softmax, LayerNormalization; dynamo's has a few more Reshapes) with equal
    outputs and, within noise, equal speed. A search exports once per trial, so
    the faster exporter wins; ``dynamo=True`` stays available for when the
    TorchScript exporter is retired. Both exporters' warnings are silenced.

    Example::

        export_onnx(build_model(preset("xxs")), "xxs.onnx", 256, 256)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parameter = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    example = torch.zeros(batch_size, 3, height, width, device=device, dtype=dtype)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with warnings.catch_warnings():
            # Deprecation notices and TracerWarnings about shapes baked in as constants (H and W are fixed).
            warnings.simplefilter("ignore")
            if dynamo:
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=ONNX_OPSET,
                    dynamic_shapes=({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None,
                    external_data=False,
                    verbose=False,
                )
            else:
                axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=ONNX_OPSET,
                    dynamic_axes=axes if dynamic_batch else None,
                )
    finally:
        for module, training in modes.items():
            module.training = training
    return path


def _ort_session(path: Path, spec: LatencySpec) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: constant-folding notes are not the user's concern
    if spec.device == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": torch.cuda.current_device()})]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


# --- backends --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    run: Callable[[], object]  # one inference: what is timed
    forward: Callable[[], object] | None  # one PyTorch forward whose peak memory is the backend's; None: unknown


def _prepare_eager(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> _Prepared:
    def forward() -> object:
        return model(x)

    return _Prepared(forward, forward)


def _prepare_onnxruntime(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> _Prepared:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        export_onnx(model, path, spec.height, spec.width, spec.batch_size, dynamic_batch=False)
        session = _ort_session(path, spec)  # the session holds the graph; the file may go
    if spec.device == "cpu":
        feed = {INPUT_NAME: x.numpy()}
        return _Prepared(lambda: session.run(None, feed), None)
    # Bind device memory so that a run times the model, not host<->device copies.
    binding = session.io_binding()
    element_type = np.float16 if spec.dtype == "float16" else np.float32
    binding.bind_input(INPUT_NAME, "cuda", x.device.index or 0, element_type, tuple(x.shape), x.data_ptr())
    binding.bind_output(OUTPUT_NAME, "cuda", x.device.index or 0)
    return _Prepared(lambda: session.run_with_iobinding(binding), None)


def _prepare_cudagraph(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> _Prepared:
    with torch.inference_mode():
        # Warm up on a side stream (cuDNN autotuning, lazy allocations) so that none of it is captured.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
    # Capture records exactly the allocations of one eager forward into the graph's pool.
    return _Prepared(graph.replay, lambda: model(x))


def _prepare_compile(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> _Prepared:
    # Dynamo caches per code object and falls back to eager after a few recompiles of
    # MobileViT.forward; a search compiles many architectures, so start clean each time.
    torch.compiler.reset()
    compiled = torch.compile(model, dynamic=False)
    try:
        with torch.inference_mode():
            compiled(x)  # compilation happens here, outside the timed region
    except Exception as error:  # Dynamo/Inductor failures come in many types (no compiler, unsupported op, ...)
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
        raise InputError("--backend", f"compile is not available here: {reason}") from error

    def forward() -> object:
        return compiled(x)

    return _Prepared(forward, forward)


_BACKENDS: dict[str, Callable[[nn.Module, torch.Tensor, LatencySpec], _Prepared]] = {
    "eager": _prepare_eager,
    "onnxruntime": _prepare_onnxruntime,
    "cudagraph": _prepare_cudagraph,
    "compile": _prepare_compile,
}


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


# --- measurement -----------------------------------------------------------------------


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


class Benchmark:
    """A model made ready to time under one spec: copied, exported / compiled / captured once.

    Preparation (and the peak-memory pass) happen here, outside any lock; each
    :meth:`run` warms up and times, and may be called repeatedly, e.g. to
    interleave two models round by round. The caller's model is not modified.

    Example::

        ours, theirs = Benchmark(model_a, spec), Benchmark(model_b, spec)
        rounds = [(ours.run().median_ms, theirs.run().median_ms) for _ in range(5)]
    """

    def __init__(self, model: nn.Module, spec: LatencySpec) -> None:
        _check_available(spec)
        self.spec = spec
        dtype = DTYPES[spec.dtype]
        self._model = copy.deepcopy(model).to(device=spec.device, dtype=dtype).eval()
        # A private generator: measuring must not move the caller's random stream (seeded training).
        generator = torch.Generator().manual_seed(0)
        shape = (spec.batch_size, 3, spec.height, spec.width)
        self._input = torch.randn(shape, generator=generator).to(device=spec.device, dtype=dtype)
        with _torch_threads(spec.threads):
            self._prepared = _BACKENDS[spec.backend](self._model, self._input, spec)
            self.peak_memory_mb = self._peak_memory_mb()

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

    def run(self, lock: DeviceLock | None = None) -> LatencyStats:
        """Warm up, then time until both ``min_repeats`` and ``min_seconds`` are reached (at most ``max_repeats``).

        The timed runs are grouped into short windows. On a shared machine, other work
        (another tenant of the host, a burst of I/O) slows whole stretches of seconds, up
        to 3x here; windows whose median is over :data:`QUIET_TOLERANCE` x the lower
        quartile of the window medians are left out of the statistics (counted in
        ``discarded``), and if they are the majority, timing goes on (up to 3x
        ``min_seconds``) to find quiet ones.
        """
        spec = self.spec
        timed = self._timer()
        samples: list[float] = []
        window_starts = [0]
        exclusive = lock.exclusive() if lock is not None else nullcontext()
        with exclusive, _torch_threads(spec.threads), torch.inference_mode(), _gc_paused():
            for _ in range(spec.warmup):
                self._prepared.run()
            if spec.device == "cuda":
                torch.cuda.synchronize()
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
        kept = _quiet_runs(samples, window_starts)
        times = np.asarray(kept)
        p10, median, p90 = np.percentile(times, [10, 50, 90])
        return LatencyStats(
            median_ms=float(median),
            p10_ms=float(p10),
            p90_ms=float(p90),
            mean_ms=float(times.mean()),
            n=len(kept),
            spec=spec,
            peak_memory_mb=self.peak_memory_mb,
            discarded=len(samples) - len(kept),
        )


def _quiet_runs(samples: list[float], window_starts: list[int]) -> list[float]:
    """The runs of the windows that other work did not slow (all runs if there are too few windows)."""
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
    """Latency of ``model`` (eval mode, a random input of the spec's shape) under ``spec``.

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


# --- device exclusivity ----------------------------------------------------------------


def _flock(path: Path, operation: int) -> int:
    # A fresh descriptor per acquisition: flock locks belong to the open file, so threads
    # and forked or pickled copies of one DeviceLock contend with each other as they should.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, operation)
    except BaseException:
        os.close(fd)
        raise
    return fd


class DeviceLock:
    """Cross-process reader/writer lock on a lock file (fcntl), writer-preferring.

    Training holds :meth:`shared` for a step or a few (many holders at once);
    latency measurement holds :meth:`exclusive`, which waits for the shared holders
    to leave and keeps new ones out. ``flock`` grants a shared lock whenever only
    shared holders are in, so two trainers re-taking it back to back would starve a
    measurer; a second file, the turnstile, fixes that: the measurer holds it while
    waiting and inside, and trainers pass through it briefly before taking the
    shared lock. Not re-entrant. Picklable (it holds paths only).

    Example::

        lock = DeviceLock(run_dir / "device.lock")
        with lock.shared():
            train_step()
        with lock.exclusive():
            time_model()
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.turnstile = self.path.with_name(self.path.name + ".turnstile")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        turnstile = _flock(self.turnstile, fcntl.LOCK_EX)
        try:
            main = _flock(self.path, fcntl.LOCK_EX)
            try:
                yield
            finally:
                os.close(main)
        finally:
            os.close(turnstile)

    @contextmanager
    def shared(self) -> Iterator[None]:
        turnstile = _flock(self.turnstile, fcntl.LOCK_EX)
        try:
            main = _flock(self.path, fcntl.LOCK_SH)
        finally:
            os.close(turnstile)
        try:
            yield
        finally:
            os.close(main)
