"""Latency specs, backends, ONNX export and the device lock: behaviour, never timing thresholds."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mvit_nas import ArchConfig, MobileViTStageConfig, MV2StageConfig, build_model, preset
from mvit_nas.latency import (
    Calibration,
    DeviceLock,
    LatencySpec,
    LatencyStats,
    backends,
    calibrate,
    export_onnx,
    measure,
    measure_config,
    measure_judged,
    relative,
    resolve_spec,
    timing,
)
from mvit_nas.validate import InputError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# One thread: tests share a small CPU with other work, and two OpenMP threads that must meet
# at every operator slow to a crawl when another process holds a core.
FAST = {"threads": 1, "warmup": 1, "min_repeats": 3, "min_seconds": 0.0}


def tiny_config(resolution: int = 64) -> ArchConfig:
    """The smallest MobileViT that still has every block kind (exports in a fraction of XXS's time)."""
    vit = MobileViTStageConfig(
        out_channels=16,
        mv2_exp=2,
        transformer_channels=16,
        ffn_dim=32,
        transformer_blocks=1,
        num_heads=2,
        patch_h=2,
        patch_w=2,
    )
    mv2 = MV2StageConfig(out_channels=8, mv2_exp=2, num_blocks=1)
    return ArchConfig(
        stem_channels=8, layer1=mv2, layer2=mv2, layer3=vit, layer4=vit, layer5=vit, resolution=resolution
    )


# --- specs ------------------------------------------------------------------------------


def test_spec_and_stats_round_trip_through_json() -> None:
    spec = LatencySpec(device="cpu", backend="eager", batch_size=4, height=96, width=128, threads=3, min_seconds=0.5)
    assert LatencySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    stats = LatencyStats(median_ms=2.0, p10_ms=1.5, p90_ms=3.0, mean_ms=2.2, n=40, spec=spec, peak_memory_mb=None)
    record = stats.to_dict()
    assert {"median", "p10", "p90", "mean", "n", "device", "backend", "batch_size", "height", "width"} <= set(record)
    assert {"dtype", "threads", "peak_memory_mb"} <= set(record)
    assert LatencyStats.from_dict(json.loads(json.dumps(record))) == stats


def test_resolve_spec_defaults() -> None:
    spec = resolve_spec(height=128, min_seconds=0.25)
    if torch.cuda.is_available():
        assert (spec.device, spec.backend) == ("cuda", "cudagraph")
    else:
        assert (spec.device, spec.backend) == ("cpu", "onnxruntime")
    assert (spec.height, spec.width, spec.min_seconds) == (128, 128, 0.25)
    assert spec.threads >= 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device": "tpu"}, "--device"),
        ({"backend": "tensorrt"}, "--backend"),
        ({"device": "cpu", "backend": "cudagraph"}, "--backend"),
        ({"batch_size": 0}, "--batch-size"),
        ({"batch_size": -2}, "--batch-size"),
        ({"height": 16}, "--resolution"),
        ({"height": 64, "width": 31}, "--resolution"),
        ({"device": "cpu", "dtype": "float16"}, "--dtype"),
        ({"dtype": "int8"}, "--dtype"),
        ({"threads": 0}, "--threads"),
        ({"min_repeats": 0}, "min_repeats"),
        ({"repeats": 5}, "repeats"),
    ],
)
def test_resolve_spec_rejects_bad_input(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as error:
        resolve_spec(**kwargs)
    assert error.value.field == field


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error_not_a_cpu_run() -> None:
    with pytest.raises(InputError, match="CUDA was requested") as error:
        resolve_spec(device="cuda")
    assert error.value.field == "--device"
    spec = LatencySpec(device="cuda", backend="eager")  # e.g. read back from another machine's record
    with pytest.raises(InputError) as error:
        measure(nn.Conv2d(3, 4, 1), spec)
    assert error.value.field == "--device"


def test_onnxruntime_on_cuda_needs_the_cuda_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert resolve_spec().backend == "cudagraph"
    with pytest.raises(InputError, match="CUDAExecutionProvider") as error:
        resolve_spec(device="cuda", backend="onnxruntime")
    assert error.value.field == "--backend"


# --- ONNX export ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dynamo", "dynamic_batch"),
    [(False, False), (False, True), pytest.param(True, True, marks=pytest.mark.slow)],
)
def test_onnx_runtime_output_equals_eager(tmp_path: Path, dynamo: bool, dynamic_batch: bool) -> None:
    # 80 px leaves 5x5 and 3x3 maps in the MobileViT stages: the bilinear resize is exercised too.
    model = build_model(tiny_config(80))
    path = export_onnx(model, tmp_path / "m.onnx", 80, 80, batch_size=2, dynamic_batch=dynamic_batch, dynamo=dynamo)
    assert model.training  # the caller's mode is restored
    model.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 3) if dynamic_batch else (2,):
        x = torch.randn(batch, 3, 80, 80)
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


# --- measuring --------------------------------------------------------------------------


def check_stats(stats: LatencyStats, spec: LatencySpec) -> None:
    assert stats.spec == spec
    assert stats.n >= spec.min_repeats
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_cpu_backend_measures_a_mobilevit(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exports: list[dict[str, Any]] = []

    def spy(model: nn.Module, path: Path, height: int, width: int, batch_size: int = 1, **options: Any) -> Path:
        exports.append({"shape": (batch_size, height, width), **options})
        return export_onnx(model, path, height, width, batch_size, **options)

    monkeypatch.setattr(backends, "export_onnx", spy)
    spec = resolve_spec(device="cpu", backend=backend, batch_size=2, height=64, width=96, **FAST)
    stats = measure_config(tiny_config(), spec)
    check_stats(stats, spec)
    if backend == "onnxruntime":
        # Timed on a graph of the spec's fixed shape: ONNX Runtime folds all shape arithmetic.
        assert exports == [{"shape": (2, 64, 96), "dynamic_batch": False}]
        assert stats.peak_memory_mb is None  # no truthful measure of ONNX Runtime's arena
    else:
        assert stats.peak_memory_mb is not None and stats.peak_memory_mb > 0


def test_compile_backend_measures_or_says_why_not() -> None:
    # A two-layer model: Inductor compiles it in seconds, a MobileViT takes minutes on 2 cores.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1))
    spec = resolve_spec(device="cpu", backend="compile", height=32, **FAST)
    try:
        stats = measure(model, spec)
    except InputError as error:
        assert error.field == "--backend"
        assert error.problem.startswith("compile is not available here")
    else:
        check_stats(stats, spec)


def test_peak_memory_counts_weights_input_and_intermediates() -> None:
    model = nn.Sequential(nn.Conv2d(3, 64, 1, bias=False), nn.ReLU())
    spec = resolve_spec(device="cpu", backend="eager", height=64, **FAST)
    stats = measure(model, spec)
    weights, image, activation = 64 * 3 * 4, 3 * 64 * 64 * 4, 64 * 64 * 64 * 4
    assert stats.peak_memory_mb is not None
    # The conv's output is still alive while the (not in-place) ReLU writes its own.
    assert stats.peak_memory_mb * 2**20 >= weights + image + 2 * activation


def test_repeats_follow_min_seconds_and_max_repeats() -> None:
    model = nn.Conv2d(3, 4, 1)
    capped = resolve_spec(device="cpu", backend="eager", height=32, threads=1, warmup=0, min_repeats=3, max_repeats=3)
    assert measure(model, dataclasses.replace(capped, min_seconds=60.0)).n == 3
    timed = dataclasses.replace(capped, max_repeats=1_000_000, min_seconds=0.2)
    assert measure(model, timed).n > 3


def test_windows_slowed_by_other_work_are_left_out() -> None:
    quiet, slowed = [1.0, 1.1, 0.9, 1.0], [3.0, 3.2, 2.9, 3.1]  # a burst of interference: 3x for a while
    windows = [quiet, quiet, slowed, slowed, quiet, quiet, quiet, quiet]
    samples = [run for window in windows for run in window]
    starts = [4 * index for index in range(len(windows))]
    assert timing._quiet_runs(samples, starts) == [run for window in windows if window is quiet for run in window]
    # Too few windows to tell interference from noise: every run counts.
    assert timing._quiet_runs(samples[:12], starts[:3]) == samples[:12]


class _Interfered(nn.Module):
    """Takes 1 ms a call, but 3 ms for calls 60..119: what a neighbour's burst of work looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(0.003 if 60 <= self.calls < 120 else 0.001)
        return x


def test_measure_reports_the_undisturbed_latency_and_how_many_runs_it_left_out() -> None:
    spec = resolve_spec(device="cpu", backend="eager", height=32, **{**FAST, "min_seconds": 0.6})
    stats = measure(_Interfered(), spec)
    assert stats.discarded >= 30  # most of the 60 slow calls fell in windows that were left out
    assert stats.median_ms < 2.0 and stats.n + stats.discarded > stats.n


def test_measure_leaves_model_threads_and_rng_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5))
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    other = 1 if threads != 1 else 2
    measure(model, resolve_spec(device="cpu", backend="eager", height=32, **(FAST | {"threads": other})))
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


class _CountingLock:
    """Stands in for a DeviceLock and tells whether it is held."""

    def __init__(self) -> None:
        self.held = False

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        self.held = True
        try:
            yield
        finally:
            self.held = False


def test_lock_is_held_for_warmup_and_timing_only() -> None:
    lock = _CountingLock()
    calls = {True: 0, False: 0}

    class Probe(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls[lock.held] += 1
            return super().forward(x)

    spec = resolve_spec(device="cpu", backend="eager", height=32, **FAST)
    stats = measure(Probe(3, 4, 1), spec, lock=lock)  # type: ignore[arg-type]
    assert calls[True] == spec.warmup + stats.n
    assert calls[False] == 1  # the peak-memory pass, outside the lock


# --- CUDA (skipped without a GPU) -------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("backend", ["eager", "cudagraph", "onnxruntime"])
def test_cuda_backend_measures_a_mobilevit(backend: str) -> None:
    if backend == "onnxruntime" and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider")
    spec = resolve_spec(device="cuda", backend=backend, height=64, **FAST)
    stats = measure_config(tiny_config(), spec)
    check_stats(stats, spec)
    assert (stats.peak_memory_mb is None) == (backend == "onnxruntime")


@needs_cuda
def test_cuda_float16_measures() -> None:
    spec = resolve_spec(device="cuda", backend="eager", height=64, dtype="float16", **FAST)
    check_stats(measure_config(tiny_config(), spec), spec)


# --- device lock ------------------------------------------------------------------------

HOLD_S = 0.03


def _log(path: str, kind: str, begin: float, end: float) -> None:
    with open(path, "a") as log:  # one short O_APPEND write per line: lines never interleave
        log.write(f"{kind} {begin} {end}\n")


def _trainer(lock_path: str, log_path: str, stop: Any, holding: Any) -> None:
    lock = DeviceLock(lock_path)
    while not stop.is_set():
        with lock.shared():
            begin = time.monotonic()
            holding.set()
            time.sleep(HOLD_S)
            end = time.monotonic()
        _log(log_path, "S", begin, end)


def _measurer(lock_path: str, log_path: str, rounds: int) -> None:
    lock = DeviceLock(lock_path)
    for _ in range(rounds):
        with lock.exclusive():
            begin = time.monotonic()
            time.sleep(HOLD_S)
            end = time.monotonic()
        _log(log_path, "X", begin, end)
        time.sleep(HOLD_S / 3)


def test_device_lock_lets_a_measurer_in_between_busy_trainers_without_overlap(tmp_path: Path) -> None:
    lock_path, log_path, rounds = str(tmp_path / "device.lock"), str(tmp_path / "log"), 3
    context = multiprocessing.get_context("fork")  # the children only need fcntl and time: no re-imports
    stop = context.Event()
    trainers = []
    for _ in range(2):
        holding = context.Event()
        trainer = context.Process(target=_trainer, args=(lock_path, log_path, stop, holding))
        trainer.start()
        holding.wait(timeout=10)
        time.sleep(HOLD_S / 2)  # out of phase, so that the shared lock is never free: only preference lets X in
        trainers.append(trainer)
    measurer = context.Process(target=_measurer, args=(lock_path, log_path, rounds))
    measurer.start()
    measurer.join(timeout=20)
    starved = measurer.is_alive()
    if starved:
        measurer.terminate()
    stop.set()
    for trainer in trainers:
        trainer.join(timeout=10)
    assert not starved and measurer.exitcode == 0

    intervals: dict[str, list[tuple[float, float]]] = {"S": [], "X": []}
    for line in Path(log_path).read_text().splitlines():
        kind, begin, end = line.split()
        intervals[kind].append((float(begin), float(end)))
    shared, exclusive = intervals["S"], intervals["X"]
    assert len(exclusive) == rounds
    for x_begin, x_end in exclusive:
        assert not [s for s in shared if s[0] < x_end and x_begin < s[1]], "exclusive overlapped a shared holder"
    assert any(a[0] < b[1] and b[0] < a[1] for a in shared for b in shared if a != b), "shared was not shared"
    first, last = min(exclusive)[0], max(exclusive)[1]
    assert any(end <= first for _, end in shared) and any(begin >= last for begin, _ in shared)


def test_device_lock_is_picklable_and_reusable(tmp_path: Path) -> None:
    import pickle

    lock = pickle.loads(pickle.dumps(DeviceLock(tmp_path / "sub" / "gpu0.lock")))
    for _ in range(2):
        with lock.shared(), lock.shared():  # shared holders coexist, even in one process
            pass
        with lock.exclusive():
            pass


def test_every_onnx_runtime_session_the_package_creates_has_spinning_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # One place makes sessions (exports check their file through it too), so checking it covers them all.
    package = Path(__file__).resolve().parents[1] / "mvit_nas"
    makers = [path.name for path in package.rglob("*.py") if "InferenceSession(" in path.read_text()]
    assert makers == ["onnx.py"], makers
    created: list[Any] = []
    real = ort.InferenceSession

    def spy(model: Any, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        created.append(options)
        return real(model, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    cfg = dataclasses.replace(preset("xxs"), resolution=64)
    spec = LatencySpec(backend="onnxruntime", threads=1, height=64, width=64, warmup=1, min_repeats=3, min_seconds=0.0)
    measure_config(cfg, spec)
    assert created, "no ONNX Runtime session was created"
    for options in created:
        for pool in ("intra_op", "inter_op"):
            assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == "0"


# --- reference-normalised measurement -----------------------------------------------------


def test_a_judged_measurement_records_the_reference_the_ratio_and_its_interval() -> None:
    spec = resolve_spec(device="cpu", backend="eager", height=32, **FAST)
    calibration = Calibration(reference_ms={"narrow": 2.0}, spec=spec)
    wide, narrow = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(3, 4, 1)
    stats = measure_judged(wide, spec, calibration, references={"narrow": narrow})
    assert stats.reference_ms == 2.0 and stats.reference_median_ms is not None and stats.reference_median_ms > 0
    assert stats.ratio is not None and stats.ratio_low is not None and stats.ratio_high is not None
    assert stats.ratio_low <= stats.ratio <= stats.ratio_high
    assert stats.ratio > 1  # 64 output channels of 3x3 take longer than 4 of 1x1
    assert stats.judged_ms == pytest.approx(stats.ratio * 2.0)
    low, high = stats.judged_interval_ms
    assert low <= stats.judged_ms <= high and stats.median_ms > 0 and stats.n >= relative.MIN_ROUNDS
    record = json.loads(json.dumps(stats.to_dict()))
    assert record["judged"] == pytest.approx(stats.judged_ms) and LatencyStats.from_dict(record) == stats


def test_interleaved_candidates_share_the_reference_rounds() -> None:
    spec = resolve_spec(device="cpu", backend="eager", height=32, **FAST)
    calibration = Calibration(reference_ms={"conv": 1.0}, spec=spec)
    candidates = [timing.Benchmark(nn.Conv2d(3, c, 3), spec, peak_memory=False) for c in (4, 32)]
    reference = {"conv": timing.Benchmark(nn.Conv2d(3, 8, 3), spec, peak_memory=False)}
    small, large = relative.interleave(candidates, reference, calibration, seconds=0.0)
    assert small.n >= relative.MIN_ROUNDS and large.n >= relative.MIN_ROUNDS
    assert small.reference_median_ms == large.reference_median_ms  # one reference, timed in the same rounds


# Calibrated at 1, 4 and 8 ms; in the rounds the host runs them 20%, 20% and 10% slow.
_LADDER = {"a": 1.0, "b": 4.0, "c": 8.0}
_SLOWED = {"a": 1.2, "b": 4.8, "c": 8.8}


@pytest.mark.parametrize(
    ("candidate_ms", "judged_ms"),
    [
        (2.4, 2.0),  # halfway between a and b in log latency, slowed 20% like both: judged 20% lower
        ((4.8 * 8.8) ** 0.5, (4.0 * 8.0) ** 0.5),  # halfway between b and c: by those two, not by a
        (0.6, 0.5),  # below the fastest reference: by that one alone
        (11.0, 10.0),  # above the slowest: by that one alone
    ],
)
def test_a_candidate_is_judged_by_the_two_references_that_bracket_it(candidate_ms: float, judged_ms: float) -> None:
    rounds = {name: np.full(5, ms) for name, ms in _SLOWED.items()}
    blocks, reference_ms = relative._bracketed(np.full(5, candidate_ms), rounds, Calibration(_LADDER, LatencySpec()))
    assert candidate_ms / float(np.median(blocks)) * reference_ms == pytest.approx(judged_ms)


def test_a_measurement_times_every_reference_of_the_calibration_in_every_round() -> None:
    spec = resolve_spec(device="cpu", backend="eager", height=32, **FAST)
    calibration = Calibration(reference_ms={"narrow": 1.0, "wide": 4.0}, spec=spec)
    references = {"narrow": nn.Conv2d(3, 4, 1), "wide": nn.Conv2d(3, 64, 3, padding=1)}
    calls: dict[str, int] = {}
    original = timing.Benchmark.segment

    def counted(self: timing.Benchmark, seconds: float, settle: float) -> list[float]:
        calls[id(self)] = calls.get(id(self), 0) + 1
        return original(self, seconds, settle)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing.Benchmark, "segment", counted)
        stats = measure_judged(nn.Conv2d(3, 16, 3, padding=1), spec, calibration, references=references)
    assert len(calls) == 3 and len(set(calls.values())) == 1  # candidate and both references, round for round
    assert min(calibration.reference_ms.values()) <= stats.reference_ms <= max(calibration.reference_ms.values())


def test_calibration_times_every_reference_model_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[str] = []
    monkeypatch.setattr(relative, "reference_model", lambda name: timed.append(name) or nn.Conv2d(3, 4, 1))
    spec = resolve_spec(device="cpu", backend="eager", height=64, **FAST)
    calibration = calibrate(spec)
    assert timed == list(relative.REFERENCES) and list(calibration.reference_ms) == timed
    assert all(ms > 0 for ms in calibration.reference_ms.values())
    assert calibration.spec == relative.reference_spec(spec)
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration


def test_a_calibration_from_before_the_ladder_reads_as_its_one_reference() -> None:
    spec = relative.reference_spec(resolve_spec(device="cpu", backend="eager", height=64, **FAST))
    old = {
        "reference_ms": 1.6,
        "spec": spec.to_dict(),
        "hardware": "cpu: A",
        "measured_at": 0.0,
        "reference": "xxs@128",
    }
    assert Calibration.from_dict(old) == Calibration({"xxs@128": 1.6}, spec, "cpu: A")


def test_a_calibration_keeps_its_fastest_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    medians = iter([2.4, 1.6, 1.9])  # the first burst caught a passing load
    spec = resolve_spec(device="cpu", backend="eager", height=64, **FAST)
    stats = relative.Benchmark(nn.Conv2d(3, 4, 1), spec, peak_memory=False).run()
    monkeypatch.setattr(relative, "REFERENCES", ("xxs@128",))
    monkeypatch.setattr(relative, "reference_model", lambda name: nn.Conv2d(3, 4, 1))
    monkeypatch.setattr(
        relative.Benchmark, "run", lambda self, lock=None: dataclasses.replace(stats, median_ms=next(medians))
    )
    assert calibrate(spec).reference_ms == {"xxs@128": 1.6}


def test_a_run_judges_by_its_quietest_calibration_on_the_same_hardware_and_spec() -> None:
    spec = resolve_spec(device="cpu", backend="eager", height=64, **FAST)
    ref = relative.reference_spec(spec)
    history = [
        Calibration({"a": 2.4, "b": 9.0}, ref, hardware="cpu: A"),  # a start on a busy machine
        Calibration({"a": 1.6, "b": 9.5}, ref, hardware="cpu: A"),  # a quiet resume (by its fastest reference)
        Calibration({"a": 0.9, "b": 5.0}, ref, hardware="cpu: B"),  # another machine: never counts
        Calibration({"a": 1.0, "b": 5.0}, dataclasses.replace(ref, threads=ref.threads + 1), hardware="cpu: A"),
    ]
    assert relative.quietest(history, spec, "cpu: A") == history[1]
    assert relative.quietest(history, spec, "cpu: C") is None


def _judged(low_ms: float, high_ms: float, spec: LatencySpec) -> LatencyStats:
    mid = (low_ms + high_ms) / 2
    return LatencyStats(mid, mid, mid, mid, 50, spec, None, reference_ms=1.0, ratio=mid, ratio_low=low_ms,
                        ratio_high=high_ms)  # fmt: skip


@pytest.mark.parametrize(("low", "high", "remeasured"), [(4.8, 5.2, True), (4.0, 4.5, False), (5.5, 6.0, False)])
def test_a_trial_whose_interval_straddles_the_budget_is_measured_again_for_longer(
    low: float, high: float, remeasured: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mvit_nas.evaluation as evaluation

    spec = resolve_spec(device="cpu", backend="eager", height=64, **(FAST | {"min_seconds": 0.5}))
    calls: list[float | None] = []

    def fake(_model: nn.Module, _spec: LatencySpec, _calibration: Calibration, **kwargs: Any) -> LatencyStats:
        calls.append(kwargs.get("seconds"))
        return _judged(low, high, spec) if len(calls) == 1 else _judged(5.05, 5.1, spec)

    monkeypatch.setattr(evaluation, "measure_judged", fake)
    monkeypatch.setattr("mvit_nas.latency.lock.lock_dir", lambda: tmp_path)
    stats = evaluation.judge_latency(tiny_config(), spec, 5.0, Calibration({"xxs@128": 1.0}, spec))
    assert stats.remeasured is remeasured
    assert calls == ([None, evaluation.STRADDLE_SECONDS_FACTOR * 0.5] if remeasured else [None])
    if remeasured:
        assert stats.judged_ms == pytest.approx(5.075)  # the longer measurement decides


def test_timing_pins_the_measuring_thread_and_restores_its_cores() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    allowed = os.sched_getaffinity(0)
    spec = resolve_spec(device="cpu", backend="eager", height=32, **FAST)
    seen = []
    with timing.timing_context(spec):
        seen.append(os.sched_getaffinity(0))
    assert seen == [set(sorted(allowed)[-1:])] and os.sched_getaffinity(0) == allowed
