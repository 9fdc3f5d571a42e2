"""One trial's evaluation, as a worker runs it: cost, latency, then the accuracy proxy if the latency fits.

:func:`evaluate` runs on a Ray worker (any machine of the cluster) or in-process; it reads
nothing from the run folder: its inputs arrive as arguments and through
:class:`~mvit_nas.executors.Shared`, and it returns everything as an :class:`Evaluation`
(the record, and the proxy-trained weights that the driver saves). A promotion of
successive halving (:mod:`mvit_nas.fidelity`) runs through the same function with its
rung: :func:`train_rung` trains the architecture longer.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mvit_nas.config import ArchConfig
from mvit_nas.cost import count_cost
from mvit_nas.data import ProxyData
from mvit_nas.executors import Shared, node_name
from mvit_nas.faults import inject_fault
from mvit_nas.fidelity import RungResult
from mvit_nas.latency import (
    Calibration,
    LatencySpec,
    LatencyStats,
    calibrate,
    check_available,
    device_lock,
    hardware_name,
    measure_judged,
)
from mvit_nas.model import build_model
from mvit_nas.proxy import ProxyResult, ProxySpec, StepGuard, TrialFailed, evaluate_proxy
from mvit_nas.run import TrialRecord
from mvit_nas.settings import SearchSettings
from mvit_nas.validate import first_line

if TYPE_CHECKING:
    from mvit_nas.predictor import LatencyTable


@dataclass(frozen=True)
class WorkerInputs:
    """What every evaluation needs besides its config, sent once to the workers (never read from the run folder)."""

    data: ProxyData
    table: LatencyTable | None  # the latency predictor, when the run predicts latency
    # The reference's latency, timed by the driver when the run started; None when the driver cannot
    # time the workers' device (a cluster's driver): each worker process then calibrates once.
    calibration: Calibration | None = None


STRADDLE_SECONDS_FACTOR = 3  # a trial whose interval straddles the budget is timed again, this much longer
_OWN_CALIBRATION: dict[tuple[str, str, int], Calibration] = {}


def _calibration(spec: LatencySpec, inputs: WorkerInputs) -> Calibration:
    if inputs.calibration is not None:
        return inputs.calibration
    key = (spec.device, spec.backend, spec.threads)
    if key not in _OWN_CALIBRATION:
        _OWN_CALIBRATION[key] = calibrate(spec, device_lock(spec.device))
    return _OWN_CALIBRATION[key]


def judge_latency(cfg: ArchConfig, spec: LatencySpec, budget_ms: float, calibration: Calibration) -> LatencyStats:
    """Measure ``cfg`` against the references, holding the device; again, longer, if the interval straddles the budget.

    Export and session set-up hold the device too: on a CPU they would slow another
    worker's timing. A judged latency whose 95% interval contains the budget could
    fall either side by luck: it is timed again for :data:`STRADDLE_SECONDS_FACTOR` x as
    long, and that measurement (``remeasured=True``) decides.
    """
    with device_lock(spec.device).exclusive():
        model = build_model(cfg)
        stats = measure_judged(model, spec, calibration)
        low, high = stats.judged_interval_ms
        if low <= budget_ms < high:
            longer = measure_judged(model, spec, calibration, seconds=STRADDLE_SECONDS_FACTOR * spec.min_seconds)
            stats = dataclasses.replace(longer, remeasured=True)
    return stats


def _latency(cfg: ArchConfig, settings: SearchSettings, inputs: WorkerInputs) -> LatencyStats:
    spec = dataclasses.replace(settings.latency, height=cfg.resolution, width=cfg.resolution)
    if inputs.table is not None:
        ms = inputs.table.predict(cfg)
        return LatencyStats(ms, ms, ms, ms, n=0, spec=spec, peak_memory_mb=None, predicted=True)
    check_available(spec)  # on this worker: the driver may run on a machine without the device
    return judge_latency(cfg, spec, settings.budget_ms, _calibration(spec, inputs))


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` hands back: the result, and the weights the training trained (CPU, timm layout).

    ``record`` is the trial's :class:`~mvit_nas.run.TrialRecord` for its first evaluation
    (rung 0), a :class:`~mvit_nas.fidelity.RungResult` for a promotion's longer training.
    ``weights`` is None unless the model was trained without failing. The worker never
    writes the run folder (it may be on another machine): the driver saves the weights.
    """

    record: TrialRecord | RungResult
    weights: dict[str, torch.Tensor] | None = None


def _proxy(cfg: ArchConfig, spec: ProxySpec, data: ProxyData, compute: StepGuard) -> ProxyResult | str:
    """The proxy's result, or why it could not score ``cfg`` (divergence, out of memory) in one line."""
    try:
        return evaluate_proxy(cfg, spec, data, step_guard=compute)
    except TrialFailed as error:
        return error.reason
    except (MemoryError, RuntimeError) as error:
        if "memory" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        return f"out of memory: {first_line(error, 300)}"


def evaluate(trial_number: int, cfg: ArchConfig, settings: SearchSettings, shared: Shared, rung: int = 0) -> Evaluation:
    """Evaluate one architecture: cost, latency, then (if within budget) the accuracy proxy.

    Returns an :class:`Evaluation`: the evaluation fields of a :class:`~mvit_nas.run.TrialRecord`,
    with the machine and device that ran it, and the proxy-trained weights. ``shared`` holds
    the :class:`WorkerInputs`. A proxy failure (divergence, out of memory) is returned as
    ``failure``; any other exception propagates and the driver records it. ``rung`` >= 1: a
    promotion of successive halving (:mod:`mvit_nas.fidelity`), trained for that rung's
    epochs instead (:func:`train_rung`).
    """
    if rung:
        return train_rung(trial_number, cfg, rung, settings, shared)
    started = time.perf_counter()
    proxy_spec = inject_fault(trial_number, settings.proxy)  # a test's hang must not hold the device
    compute = device_lock(settings.proxy.device).shared  # held by every piece of this trial's compute
    with compute():
        inputs: WorkerInputs = shared.get()
        cost = count_cost(cfg)
    latency = _latency(cfg, settings, inputs)
    record = TrialRecord(params=cost.params, flops=cost.flops, latency=latency, node=node_name())
    record = dataclasses.replace(
        record, feasible=latency.judged_ms <= settings.budget_ms, hardware=hardware_name(settings.latency.device)
    )
    weights = None
    if record.feasible:
        proxy = _proxy(cfg, proxy_spec, inputs.data, compute)
        if isinstance(proxy, str):
            record = dataclasses.replace(record, failure=proxy)
        else:
            record = dataclasses.replace(
                record, accuracy=proxy.score, proxy_seconds=proxy.seconds, proxy_resolution=proxy.resolution
            )
            weights = proxy.weights
    return Evaluation(dataclasses.replace(record, duration_s=time.perf_counter() - started), weights)


def train_rung(trial_number: int, cfg: ArchConfig, rung: int, settings: SearchSettings, shared: Shared) -> Evaluation:
    """Train ``cfg`` afresh for rung ``rung``'s epochs (the proxy's training, longer); score it on the held-out split.

    Latency was judged at rung 0 and is not measured again. The training holds the
    device's shared lock, as a trial's proxy does.
    """
    started = time.perf_counter()
    epochs = settings.rung_epochs()[rung]
    spec = dataclasses.replace(settings.proxy, kind="train", epochs=epochs)
    compute = device_lock(spec.device).shared
    with compute():
        inputs: WorkerInputs = shared.get()
    proxy = _proxy(cfg, spec, inputs.data, compute)
    seconds = time.perf_counter() - started
    if isinstance(proxy, str):
        return Evaluation(RungResult(trial_number, rung, epochs, None, seconds, failure=proxy, node=node_name()))
    result = RungResult(trial_number, rung, epochs, proxy.score, seconds, proxy.resolution, node=node_name())
    return Evaluation(result, proxy.weights)


def describe_failure(error: BaseException) -> str:
    """One line for the ``failure`` of a trial whose evaluation raised ``error`` (or whose worker died)."""
    name = type(error).__name__
    if "OutOfMemory" in name or isinstance(error, MemoryError):
        return f"out of memory: {first_line(error)}"
    if "WorkerCrashed" in name or "WorkerDied" in name:
        return "worker died: the process running the trial was killed (retried once)"
    message = first_line(error) if str(error).strip() else ""
    return f"error: {name}: {message}"[:500]
