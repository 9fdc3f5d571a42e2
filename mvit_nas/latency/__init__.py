"""Latency of a model, or of one block of it, on one device and backend, measured with the device to itself.

This package's job is to say how fast something runs, the same way every time:

- :mod:`~mvit_nas.latency.spec`: :class:`LatencySpec` (device, backend, batch,
  input size, dtype, threads, how long to time), :class:`LatencyStats`,
  :func:`resolve_spec` (``auto`` choices for this machine);
- :mod:`~mvit_nas.latency.onnx`: :func:`export_onnx`, the project's one ONNX
  exporter, and :func:`ort_session`;
- :mod:`~mvit_nas.latency.backends`: :func:`prepare` for ``onnxruntime`` (CPU
  default), ``eager``, ``cudagraph`` (CUDA default) and ``compile``;
- :mod:`~mvit_nas.latency.timing`: :class:`Benchmark`, the one timing loop (whole
  models and single blocks alike), with :func:`measure` / :func:`measure_config`;
- :mod:`~mvit_nas.latency.relative`: :func:`measure_judged`, the candidate timed in
  alternation with a ladder of fixed reference models, judged as ratio x :class:`Calibration`;
- :mod:`~mvit_nas.latency.lock`: :class:`DeviceLock`, which keeps training off the
  device while a measurement runs.

Example::

    spec = resolve_spec(device="cpu", backend="onnxruntime", height=256)
    stats = measure_config(preset("xxs"), spec)
    print(stats.median_ms, stats.p10_ms, stats.p90_ms, stats.n)
"""

from mvit_nas.latency.backends import Prepared, prepare
from mvit_nas.latency.lock import DeviceLock, device_key, device_lock
from mvit_nas.latency.onnx import IMAGE_CHANNELS, INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, export_onnx, ort_session
from mvit_nas.latency.relative import (
    REFERENCES,
    Calibration,
    calibrate,
    interleave,
    ladder,
    measure_judged,
    quietest,
    reference_model,
    reference_spec,
)
from mvit_nas.latency.spec import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEVICES,
    DTYPES,
    MAX_BATCH,
    MAX_THREADS,
    LatencySpec,
    LatencyStats,
    available_threads,
    check_available,
    cpu_name,
    hardware_name,
    resolve_spec,
)
from mvit_nas.latency.timing import (
    MIN_WINDOWS,
    QUIET_TOLERANCE,
    WINDOW_MIN_RUNS,
    WINDOW_SECONDS,
    Benchmark,
    measure,
    measure_config,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEVICES",
    "DTYPES",
    "IMAGE_CHANNELS",
    "INPUT_NAME",
    "MAX_BATCH",
    "MAX_THREADS",
    "MIN_WINDOWS",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "QUIET_TOLERANCE",
    "REFERENCES",
    "WINDOW_MIN_RUNS",
    "WINDOW_SECONDS",
    "Benchmark",
    "Calibration",
    "DeviceLock",
    "LatencySpec",
    "LatencyStats",
    "Prepared",
    "available_threads",
    "calibrate",
    "check_available",
    "cpu_name",
    "device_key",
    "device_lock",
    "export_onnx",
    "hardware_name",
    "interleave",
    "ladder",
    "measure",
    "measure_config",
    "measure_judged",
    "ort_session",
    "prepare",
    "quietest",
    "reference_model",
    "reference_spec",
    "resolve_spec",
]
