"""The verification stage: train the chosen few longer, and see whether the proxy's verdict holds.

The search ranks its front on a short proxy (a fraction of an epoch). This module's
jobs: pick the models to check (:func:`plan_models`: every front point, or the
``top`` best by proxy score, and every budget-fitted seed), train each with N
independent training seeds for E epochs on the run's dataset (its held-out
validation split) at the run's proxy resolution, one executor call per (trial,
training seed) (:func:`train_job`, on a Ray worker or in-process); record each
finished job in ``verify.json`` (:data:`mvit_nas.run.VERIFY_FILE`, rewritten
atomically after every job, so a kill loses at most the jobs in flight and a rerun
never retrains a recorded one) and save training seed 0's weights
(``weights/trial_0007.verified.pt``); then report (:class:`VerifyReport`).

Whether a front point "beats" a fitted seed is decided by the noise rule of
:mod:`mvit_nas.report.verification`: it must be no slower and more accurate by more
than twice the standard deviation of a difference of two seed means (the
seed-to-seed variance pooled over every verified model); otherwise there is "no
measurable difference".

Example::

    report = verify_run("runs/demo", epochs=2.5, seeds=2)  # resumes: recorded jobs are never retrained
    report.kendall_tau, [(c.trial, c.seed, c.verdict) for c in report.comparisons]
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial

from mvit_nas import run as run_folder
from mvit_nas.atomic import atomic_path, write_text
from mvit_nas.config import ArchConfig
from mvit_nas.data import ProxyData
from mvit_nas.executors import Shared, node_name
from mvit_nas.fidelity import VERIFY_FACTOR
from mvit_nas.latency import device_lock, hardware_name
from mvit_nas.proxy import TrialFailed, train
from mvit_nas.report.front import front
from mvit_nas.report.plot import plot_verification
from mvit_nas.report.verification import VerifyRecord, VerifyReport, build_report, fitted_seeds, read_records
from mvit_nas.run import TrialRecord
from mvit_nas.search import make_executor
from mvit_nas.settings import DEFAULT_WORKERS, RunOptions, SearchSettings
from mvit_nas.validate import InputError, check_int, check_number, first_line

__all__ = ["VerifyJob", "VerifyProgress", "plan_models", "train_job", "verify_run"]

# default verification epochs: this many times the run's proxy epochs (also successive halving's last rung)
EPOCHS_FACTOR = VERIFY_FACTOR
DEFAULT_SEEDS = 2
PLOT_FILE = "verify.png"


@dataclass(frozen=True)
class VerifyJob:
    """What a worker hands back: the record, and the trained weights (training seed 0 only; CPU tensors)."""

    record: VerifyRecord
    weights: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class VerifyProgress:
    """A job just finished: its record, and how many of this call's jobs are done (recorded ones included).

    >>> VerifyProgress(VerifyRecord(7, 0, 2.5, 0.61, 0.42, 12.0), done=3, total=8).line()
    'trial 7 seed 0: accuracy 0.6100 (proxy 0.4200), 2.5 epochs in 12.0 s; 3/8 jobs'
    """

    record: VerifyRecord
    done: int
    total: int

    def line(self) -> str:
        r = self.record
        outcome = f"failed ({r.failure})" if r.failure else f"accuracy {r.accuracy:.4f} (proxy {r.proxy_score:.4f})"
        where = f"{r.epochs:g} epochs in {r.seconds:.1f} s; {self.done}/{self.total} jobs"
        return f"trial {r.trial} seed {r.seed}: {outcome}, {where}"


# --- which models ------------------------------------------------------------------------


def plan_models(study: optuna.Study, top: int | None = None) -> dict[int, FrozenTrial]:
    """The trials to verify, by number: the front (or its ``top`` best by proxy score), then the fitted seeds."""
    points = front(study)
    if top is not None:
        points = sorted(points, key=lambda t: (-t.values[0], t.values[1], t.number))[:top]
    models = {t.number: t for t in points}
    for trial in fitted_seeds(study).values():
        models.setdefault(trial.number, trial)
    return models


# --- one job (runs on a Ray worker, or in-process) ----------------------------------------


def train_job(
    number: int, cfg: ArchConfig, seed: int, epochs: float, proxy_score: float, settings: SearchSettings, shared: Shared
) -> VerifyJob:
    """Train trial ``number``'s config with training seed ``seed``; never touches the run folder.

    A divergence or an out-of-memory is returned as the record's ``failure``; anything
    else propagates (the driver records it).
    """
    data: ProxyData = shared.get()
    spec = settings.proxy
    started = time.perf_counter()
    record = VerifyRecord(number, seed, epochs, None, proxy_score, 0.0, node_name(), hardware_name(spec.device))
    size = spec.input_size(cfg.resolution)
    try:
        result = train(
            cfg, data.at(size), epochs, size, seed=seed, threads=spec.threads, batch_size=spec.batch_size,
            lr=spec.lr, weight_decay=spec.weight_decay, warmup_fraction=spec.warmup_fraction,
            label_smoothing=spec.label_smoothing, device=spec.device, progress=False,
            step_guard=device_lock(spec.device).shared,
        )  # fmt: skip
    except (TrialFailed, MemoryError, RuntimeError) as error:
        if not isinstance(error, (TrialFailed, MemoryError)) and "memory" not in str(error).lower():
            raise
        reason = error.reason if isinstance(error, TrialFailed) else f"out of memory: {first_line(error, 300)}"
        return VerifyJob(dataclasses.replace(record, failure=reason, seconds=time.perf_counter() - started))
    record = dataclasses.replace(record, accuracy=result.accuracy, seconds=time.perf_counter() - started)
    return VerifyJob(record, result.weights if seed == 0 else None)


# --- verify.json -------------------------------------------------------------------------


def _records_text(records: Sequence[VerifyRecord]) -> str:
    # One record per line, in the order the jobs finished: a rewrite leaves every earlier line as it was.
    return "[\n" + ",\n".join("  " + json.dumps(dataclasses.asdict(r)) for r in records) + "\n]\n"


def _save_job(run_dir: Path, records: list[VerifyRecord], job: VerifyJob) -> None:
    """Save the job's weights, then record it: the record is the commit (a kill before it retrains the job)."""
    if job.weights is not None and job.record.failure is None:
        with atomic_path(run_folder.weights_path(run_dir, job.record.trial, verified=True)) as tmp:
            torch.save(job.weights, tmp)
    records.append(job.record)
    write_text(run_dir / run_folder.VERIFY_FILE, _records_text(records))


# --- the driver --------------------------------------------------------------------------


def _load_data(settings: SearchSettings, run_dir: Path) -> ProxyData:
    """The run's dataset as the search loaded it (synthetic: from the run's cache)."""
    synthetic = settings.dataset_spec().kind == "synthetic"
    return settings.load_data(run_dir / run_folder.DATA_DIR if synthetic else None)


def _run_jobs(
    run_dir: Path,
    settings: SearchSettings,
    options: RunOptions,
    jobs: list[tuple[FrozenTrial, int, float]],
    records: list[VerifyRecord],
    on_done: Callable[[VerifyRecord], None],
) -> None:
    """Keep ``options.workers`` jobs (trial, training seed, epochs) in flight; record each as it lands."""
    pool = make_executor(settings, options, function=train_job)
    try:
        shared = pool.share(_load_data(settings, run_dir))  # sent once; workers never read the run folder
        pending, in_flight = list(jobs), {}
        while pending or in_flight:
            while pending and len(in_flight) < options.workers:
                trial, seed, epochs = pending.pop(0)
                cfg = TrialRecord.of(trial).config
                handle = pool.submit(trial.number, cfg, seed, epochs, trial.values[0], settings, shared)
                in_flight[handle] = (trial, seed, epochs)
            for handle in pool.wait(list(in_flight), timeout=1.0):
                trial, seed, epochs = in_flight.pop(handle)
                try:
                    job = pool.result(handle)
                except InputError:
                    raise  # bad input (no such device here): no job can succeed
                except Exception as error:  # this job's own failure: recorded, the others go on
                    failure = f"error: {type(error).__name__}: {first_line(error)}"[:500]
                    job = VerifyJob(
                        VerifyRecord(trial.number, seed, epochs, None, trial.values[0], 0.0, failure=failure)
                    )
                _save_job(run_dir, records, job)
                on_done(job.record)
    finally:
        pool.shutdown()


def verify_run(
    run_dir: str | Path,
    epochs: float | None = None,
    *,
    top: int | None = None,
    seeds: int = DEFAULT_SEEDS,
    workers: int = DEFAULT_WORKERS,
    address: str | None = None,
    executor: str = "ray",
    gpus_per_trial: float = 1.0,
    progress: Callable[[VerifyProgress], None] | None = None,
) -> VerifyReport:
    """Train every front point (``top``: the best ``top`` by proxy score) and every fitted seed for ``epochs``
    (default: 10x the run's proxy epochs) with ``seeds`` training seeds each; record, report, plot.

    Resumable: jobs already in ``verify.json`` are kept as they are and never retrained;
    results of another epoch count are refused (:class:`InputError` naming ``--epochs``).
    ``executor="local"`` trains in-process (tests); Ray by default, ``workers`` jobs at a time.

    Example::

        report = verify_run("runs/demo", epochs=2.5, seeds=2)
        report.kendall_tau, [c.verdict for c in report.comparisons]
    """
    run_dir = Path(run_dir)
    run_folder.require_run(run_dir)
    settings = run_folder.load_settings(run_dir)
    epochs = EPOCHS_FACTOR * settings.proxy.epochs if epochs is None else epochs
    epochs = float(check_number("--epochs", epochs, 0.0, open_low=True))  # one type in verify.json
    check_int("--seeds", seeds, 2)  # the noise rule needs a seed-to-seed difference
    if top is not None:
        check_int("--top", top, 1)
    options = RunOptions(workers=workers, address=address, executor=executor, gpus_per_trial=gpus_per_trial)
    with run_folder.exclusive(run_dir):
        study = run_folder.read_study(run_dir)
        records = read_records(run_dir, epochs)
        done = {(r.trial, r.seed) for r in records}
        models = plan_models(study, top)
        jobs = [(t, s, epochs) for t in models.values() for s in range(seeds) if (t.number, s) not in done]
        total, finished = len(models) * seeds, [len(models) * seeds - len(jobs)]

        def on_done(record: VerifyRecord) -> None:
            finished[0] += 1
            if progress is not None:
                progress(VerifyProgress(record, finished[0], total))

        if jobs:
            _run_jobs(run_dir, settings, options, jobs, records, on_done)
        report = build_report(records, study, settings)
        if report.models:
            plot_verification(report, run_dir / PLOT_FILE)
    return report
