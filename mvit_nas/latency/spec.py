"""What a latency figure depends on: the checked :class:`LatencySpec`, the :class:`LatencyStats` record, this machine.

A :class:`LatencySpec` names everything a latency figure depends on (device,
backend, batch size, input size, dtype, CPU threads, how long to time); every
:class:`LatencyStats` carries its spec, so a record says how it was taken.
:func:`resolve_spec` turns user choices (``auto`` allowed) into a spec this
machine can run, and :func:`check_available` says why a spec cannot run here.

Example:

>>> from mvit_nas.latency import LatencySpec
>>> spec = LatencySpec(device="cpu", backend="eager", height=128, width=128)
>>> LatencySpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mvit_nas.config import MAX_RESOLUTION, MIN_RESOLUTION
from mvit_nas.validate import InputError, check_choice, check_int, check_keys, check_number

DEVICES = ("cpu", "cuda")
BACKENDS = ("eager", "onnxruntime", "cudagraph", "compile")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
DEFAULT_BACKEND = {"cpu": "onnxruntime", "cuda": "cudagraph"}
MAX_BATCH = 1024
MAX_THREADS = 1024
MAX_COUNT = 1_000_000  # warm-up and repeat counts
MAX_SECONDS = 3600.0
TIMING_FIELDS = ("warmup", "min_repeats", "min_seconds", "max_repeats")


@dataclass(frozen=True)
class LatencySpec:
    """How a latency is measured; validated on creation (field names in errors are CLI flags).

    >>> LatencySpec(device="cpu", backend="eager", threads=1).batch_size
    1
    >>> try:
    ...     LatencySpec(device="cpu", backend="cudagraph")
    ... except InputError as error:
    ...     print(error.field)
    --backend
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
        check_choice("--device", self.device, DEVICES)
        check_choice("--backend", self.backend, BACKENDS)
        check_int("--batch-size", self.batch_size, 1, MAX_BATCH)
        check_int("--resolution", self.height, MIN_RESOLUTION, MAX_RESOLUTION)
        check_int("--resolution", self.width, MIN_RESOLUTION, MAX_RESOLUTION)
        check_choice("--dtype", self.dtype, DTYPES)
        check_int("--threads", self.threads, 1, MAX_THREADS)
        check_int("warmup", self.warmup, 0, MAX_COUNT)
        check_int("min_repeats", self.min_repeats, 1, MAX_COUNT)
        check_int("max_repeats", self.max_repeats, self.min_repeats, MAX_COUNT)
        check_number("min_seconds", self.min_seconds, 0.0, MAX_SECONDS, unit=" seconds")
        if self.dtype == "float16" and self.device != "cuda":
            raise InputError("--dtype", "float16 is only measured on --device cuda; use float32 on cpu")
        if self.backend == "cudagraph" and self.device != "cuda":
            raise InputError("--backend", "cudagraph needs --device cuda; on cpu use onnxruntime, eager or compile")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LatencySpec:
        check_keys("latency", data, [field.name for field in dataclasses.fields(cls)])
        return cls(**data)


_STAT_KEYS = {"median": "median_ms", "p10": "p10_ms", "p90": "p90_ms", "mean": "mean_ms", "n": "n"}


@dataclass(frozen=True)
class LatencyStats:
    """Latency in milliseconds over ``n`` timed runs, with the spec it was measured under.

    ``peak_memory_mb`` is the peak tensor memory of one forward pass: the model's
    parameters and buffers, the input, and the most intermediate memory alive at
    once (on CUDA from ``torch.cuda.max_memory_allocated``; on CPU from every
    allocation and free the PyTorch profiler records, scratch buffers inside
    kernels included). ``None`` for ``onnxruntime``, whose arena is outside
    PyTorch's view and whose process RSS would not isolate this model, and when
    the measurement was asked to skip it.

    >>> spec = LatencySpec(backend="eager", threads=1)
    >>> stats = LatencyStats(3.1, 3.0, 3.4, 3.2, 300, spec, peak_memory_mb=None)
    >>> record = stats.to_dict()
    >>> record["median"], record["device"], LatencyStats.from_dict(record) == stats
    (3.1, 'cpu', True)
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    n: int
    spec: LatencySpec
    peak_memory_mb: float | None
    discarded: int = 0  # timed runs left out: their window was slowed by other work on the machine
    predicted: bool = False  # from a latency table, not timed (n = 0)
    # Reference-normalised (see mvit_nas.latency.relative): the run's calibrated reference latency, the
    # reference's median during this measurement, and the candidate/reference ratio with its 95% interval.
    reference_ms: float | None = None
    reference_median_ms: float | None = None
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    remeasured: bool = False  # the first interval straddled the budget: this is the longer second measurement

    @property
    def judged_ms(self) -> float:
        """The latency a budget is judged on: ratio x calibrated reference when measured so, else the median."""
        if self.ratio is None or self.reference_ms is None:
            return self.median_ms
        return self.ratio * self.reference_ms

    @property
    def judged_interval_ms(self) -> tuple[float, float]:
        """The 95% interval of :attr:`judged_ms` (the median twice when there is no ratio)."""
        if self.ratio_low is None or self.ratio_high is None or self.reference_ms is None:
            return self.median_ms, self.median_ms
        return self.ratio_low * self.reference_ms, self.ratio_high * self.reference_ms

    def to_dict(self) -> dict[str, Any]:
        stats = {key: getattr(self, name) for key, name in _STAT_KEYS.items()}
        record = {**stats, **self.spec.to_dict(), "peak_memory_mb": self.peak_memory_mb, "discarded": self.discarded}
        if self.predicted:
            record["predicted"] = True
        if self.ratio is not None:
            record.update({name: getattr(self, name) for name in _JUDGED_KEYS}, judged=self.judged_ms)
        return record

    @classmethod
    def from_dict(cls, data: Any) -> LatencyStats:
        spec_fields = [field.name for field in dataclasses.fields(LatencySpec)]
        extra = ("peak_memory_mb", "discarded", "predicted", "judged", *_JUDGED_KEYS)
        check_keys("latency", data, [*spec_fields, *_STAT_KEYS, *extra], _STAT_KEYS)
        spec = LatencySpec.from_dict({key: value for key, value in data.items() if key in spec_fields})
        stats = {name: data[key] for key, name in _STAT_KEYS.items()}
        return cls(
            **stats,
            spec=spec,
            peak_memory_mb=data.get("peak_memory_mb"),
            discarded=data.get("discarded", 0),
            predicted=bool(data.get("predicted", False)),
            **{name: data[name] for name in _JUDGED_KEYS if name in data},
        )


_JUDGED_KEYS = ("reference_ms", "reference_median_ms", "ratio", "ratio_low", "ratio_high", "remeasured")


def available_threads() -> int:
    """The CPUs this process may use: its affinity mask (containers, Ray workers), not the machine's core count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    """This machine's CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_name(device: str) -> str:
    """The physical device ``device`` names in this process, e.g. ``"cpu: AMD EPYC 7B13"``.

    >>> hardware_name("cpu").startswith("cpu: ")
    True
    """
    if not device.startswith("cuda"):
        return f"cpu: {cpu_name()}"
    index = int(device.partition(":")[2] or torch.cuda.current_device())
    properties = torch.cuda.get_device_properties(index)
    return f"cuda: {properties.name} ({properties.uuid})"


def check_available(spec: LatencySpec) -> None:
    """Raise :class:`InputError` if this machine cannot run ``spec`` (a spec read back from a record may not)."""
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
    *,
    here: bool = True,
    **timing: Any,
) -> LatencySpec:
    """Turn user choices (``auto`` allowed) into a checked :class:`LatencySpec` for this machine.

    With ``here=False`` the spec is for other machines (a Ray cluster's workers): whether
    this one could run it is not checked.

    ``device="auto"`` is ``cuda`` when available, else ``cpu``; ``backend="auto"`` is
    ``onnxruntime`` on CPU and ``cudagraph`` on CUDA; ``width`` defaults to ``height``;
    ``threads`` to the CPUs this process may use. ``timing`` sets ``warmup``,
    ``min_repeats``, ``min_seconds`` or ``max_repeats``. Raises :class:`InputError`
    naming the flag, and never falls back silently (``--device cuda`` without CUDA is an error).

    >>> spec = resolve_spec(device="cpu", height=128, min_seconds=0.2)
    >>> spec.backend, spec.width, spec.min_seconds
    ('onnxruntime', 128, 0.2)
    """
    check_choice("--device", device, ("auto", *DEVICES))
    check_choice("--backend", backend, ("auto", *BACKENDS))
    check_keys("timing", timing, TIMING_FIELDS)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = LatencySpec(
        device=device,
        backend=DEFAULT_BACKEND[device] if backend == "auto" else backend,
        batch_size=batch_size,
        height=height,
        width=height if width is None else width,
        dtype=dtype,
        threads=available_threads() if threads is None else threads,
        **timing,
    )
    if here:
        check_available(spec)
    return spec
