"""The search: an Optuna study over a space, evaluations on workers, under a latency budget.

Optuna is the single source of truth. The study lives in the run folder
(:mod:`mvit_nas.run`), the seeds xxs/xs/s are enqueued as trials 0-2 and their
budget-fitted variants (:mod:`mvit_nas.seeds`) right after them, the budget
is a constraint (``Trial.set_constraint``), and the front is
:func:`mvit_nas.report.front`. A small driver loop asks Optuna for trials and
runs the evaluations on an executor (Ray tasks by default; Ray Tune's own
experiment state would be a second source of truth to reconcile on resume, and
its ``OptunaSearch`` cannot pass constraints either).

One evaluation (:func:`mvit_nas.evaluation.evaluate`, on a worker): closed-form cost;
latency, measured with the device to itself; then the accuracy proxy, only when the
latency fits the budget. The worker returns the proxy-trained weights with the record
(:class:`~mvit_nas.evaluation.Evaluation`); the driver saves them
(``weights/trial_0007.pt``) before it tells the study.

Example::

    from mvit_nas import SearchSettings, search
    outcome = search(SearchSettings(budget_ms=5.0), run_dir="runs/demo", trials=30)
    for trial in outcome.front:
        print(trial.number, trial.values)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from mvit_nas import run as run_folder
from mvit_nas.atomic import atomic_path
from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.data import ProxyData
from mvit_nas.evaluation import Evaluation, WorkerInputs, describe_failure, evaluate
from mvit_nas.executors import Executor, LocalExecutor, RayExecutor, Shared
from mvit_nas.fidelity import RungResult, promotions, read_rungs
from mvit_nas.latency import Calibration, calibrate, check_available, device_lock
from mvit_nas.report import front, rung_entries
from mvit_nas.run import INTERRUPTED, TrialRecord, config_key, is_finished
from mvit_nas.seeds import FittedSeed, fitted_seeds
from mvit_nas.settings import DEFAULT_TRIALS, SAMPLERS, RunOptions, SearchSettings
from mvit_nas.space import SearchSpace
from mvit_nas.validate import InputError, writable_folder

if TYPE_CHECKING:
    from mvit_nas.predictor import LatencyTable

__all__ = ["SAMPLERS", "Evaluation", "SearchOutcome", "SearchProgress", "evaluate", "make_executor", "search"]


# --- the study's bookkeeping -----------------------------------------------------------


def _enqueue_seeds(study: optuna.Study, space: SearchSpace, fitted: list[FittedSeed]) -> None:
    """A new run starts with the published models that are points of its space (a custom space may leave some out),
    then their budget-fitted variants: the 256 px seeds keep trial numbers 0-2 whatever the budget."""
    for name in PRESETS:
        if space.contains(preset(name)):
            study.enqueue_trial(space.params_of(preset(name)), user_attrs=TrialRecord(seed=name).user_attrs())
    for seed in fitted:
        if not seed.published:  # a published model that fits as it is was queued above
            study.enqueue_trial(seed.params, user_attrs=TrialRecord(seed=seed.name).user_attrs())


def _requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed driver are failed as interrupted and enqueued again."""
    trials = study.get_trials(deepcopy=False)
    queued = {TrialRecord.of(t).retry_of for t in trials if t.state == TrialState.WAITING}
    count = 0
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        if trial.number not in queued:  # a kill between these two calls must not queue it twice
            retry = TrialRecord(seed=TrialRecord.of(trial).seed, retry_of=trial.number)
            # A trial killed before it took its enqueued parameters has them only as fixed_params.
            params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
            study.enqueue_trial(params, user_attrs=retry.user_attrs(), skip_if_exists=False)
        # Optuna has no public setter for an attribute of a trial this process did not ask.
        study._storage.set_trial_user_attr(trial._trial_id, "failure", INTERRUPTED)
        study.tell(trial.number, state=TrialState.FAIL)
        count += 1
    return count


def _tell(study: optuna.Study, trial: optuna.Trial, record: TrialRecord, budget_ms: float) -> None:
    record.write(trial)
    if record.failure or record.latency is None:
        study.tell(trial, state=TrialState.FAIL)
        return
    latency_ms = record.latency.judged_ms
    trial.set_constraint(run_folder.CONSTRAINT, latency_ms - budget_ms)
    # An over-budget trial was never trained: accuracy 0 keeps it off every front.
    accuracy = record.accuracy if record.feasible and record.accuracy is not None else 0.0
    study.tell(trial, [accuracy, latency_ms])


# --- the driver ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchProgress:
    """Where a search stands after a trial finished: that trial, finished trials, how many fit the budget, front size.

    >>> done = SearchProgress(7, 3, 2, trial=6, record=TrialRecord(failure="diverged: loss is nan at step 3"))
    >>> done.line()
    'trial 6: failed (diverged: loss is nan at step 3); 7 finished, 3 within budget, front 2'
    """

    finished: int
    feasible: int
    front: int
    trial: int | None = None
    record: TrialRecord | RungResult | None = None

    @classmethod
    def of(
        cls, study: optuna.Study, trial: int | None = None, record: TrialRecord | RungResult | None = None
    ) -> SearchProgress:
        trials = study.get_trials(deepcopy=False)
        records = [TrialRecord.of(t) for t in trials]
        feasible = sum(bool(r.feasible) and not r.failure for r in records)
        return cls(sum(is_finished(t) for t in trials), feasible, len(front(study)), trial, record)

    def line(self) -> str:
        """One line for a log: the trial (or rung) that just finished and where the search stands."""
        where = f"{self.finished} finished, {self.feasible} within budget, front {self.front}"
        if isinstance(self.record, RungResult):
            rung = self.record
            outcome = f"failed ({rung.failure})" if rung.score is None else f"accuracy {rung.score:.4f}"
            trained = f"{rung.epochs:g} epochs, {rung.seconds:.0f} s"
            return f"trial {self.trial} rung {rung.rung} ({trained}): {outcome}; {where}"
        record = self.record or TrialRecord()
        if record.failure:
            outcome = f"failed ({record.failure})"
        elif record.latency is None:
            outcome = "finished"
        else:
            outcome = f"{record.latency.judged_ms:.2f} ms, " + (
                "over budget" if not record.feasible else f"within budget, accuracy {record.accuracy or 0:.4f}"
            )
        return f"trial {self.trial}: {outcome}; {where}"


@dataclass
class SearchOutcome:
    run_dir: Path
    study: optuna.Study
    finished: int
    interrupted: bool

    @property
    def front(self) -> list[FrozenTrial]:
        return front(self.study)


@dataclass(frozen=True)
class _Promotion:
    """A promotion of successive halving in flight: trial ``number`` training at ``rung``."""

    number: int
    rung: int
    submitted: float


class _Driver:
    """Keeps ``workers`` evaluations in flight and tells Optuna each result as it lands.

    With successive halving a free worker first takes the best promotion due
    (:func:`mvit_nas.fidelity.promotions`), else a new trial; after the last new trial
    the promotions go on until none is due.
    """

    def __init__(
        self,
        study: optuna.Study,
        settings: SearchSettings,
        run_dir: Path,
        inputs: WorkerInputs,
        options: RunOptions,
        progress: Callable[[SearchProgress], None] | None,
    ) -> None:
        self.study, self.settings, self.run_dir = study, settings, run_dir
        self.space = settings.search_space()
        self.inputs, self.options, self.progress = inputs, options, progress
        self.num_classes = inputs.data.num_classes
        history = study.get_trials(deepcopy=False)
        self.finished = sum(is_finished(t) for t in history)
        # config key -> the finished trial's record, so a repeated config is not evaluated twice
        self.evaluated = {
            record.config_key: record
            for record in (TrialRecord.of(t) for t in history if t.state == TrialState.COMPLETE)
            if record.config_key is not None
        }
        self.in_flight: dict[Any, tuple[optuna.Trial, str, float]] = {}  # handle -> (trial, config key, submitted)
        # config key -> trials asked for a config that is being evaluated right now
        self.waiting: dict[str, list[tuple[optuna.Trial, ArchConfig]]] = {}
        self.pool: Executor | None = None
        self.shared: Shared | None = None  # the inputs, once shared with the pool's workers
        self.rung_epochs = settings.rung_epochs()
        self.promoting: dict[Any, _Promotion] = {}  # handle -> promotion in flight

    def run(self) -> SearchOutcome:
        started = time.monotonic()
        interrupted = False
        try:
            while True:
                timed_out = self.options.timeout is not None and time.monotonic() - started > self.options.timeout
                while not timed_out and len(self.in_flight) + len(self.promoting) < self.options.workers:
                    promotion = self._next_promotion()
                    if promotion is not None:
                        self._submit_rung(*promotion)
                    elif self._started() < self.options.trials:
                        self._start_trial()
                    else:
                        break
                if not self.in_flight and not self.promoting:
                    break
                self._collect()
        except KeyboardInterrupt:
            # In-flight trials stay RUNNING: the resume fails them as interrupted and runs them again.
            interrupted = True
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        return SearchOutcome(self.run_dir, self.study, self.finished, interrupted)

    def _start_trial(self) -> None:
        trial = self.study.ask()
        cfg = self.space.sample(trial, self.num_classes)
        key = config_key(cfg)
        TrialRecord(config=cfg, config_key=key).write(trial)
        if key in self.evaluated:  # already evaluated in this run: reuse, don't re-measure or re-train
            self._finish_duplicate(trial, key, self.evaluated[key])
        elif any(in_flight_key == key for _, in_flight_key, _ in self.in_flight.values()):
            self.waiting.setdefault(key, []).append((trial, cfg))
        else:
            self._submit(trial, key, cfg)

    def _pool(self) -> Executor:
        if self.pool is None:
            self.pool = make_executor(self.settings, self.options)
            self.shared = self.pool.share(self.inputs)
        return self.pool

    def _submit(self, trial: optuna.Trial, key: str, cfg: ArchConfig) -> None:
        handle = self._pool().submit(trial.number, cfg, self.settings, self.shared)
        self.in_flight[handle] = (trial, key, time.monotonic())

    def _next_promotion(self) -> tuple[int, int] | None:
        """The best promotion due now (trial, rung), or None (always None for a single-fidelity run)."""
        if len(self.rung_epochs) == 1:
            return None
        recorded = read_rungs(self.study.user_attrs)
        failed = [key for key, result in recorded.items() if result.score is None]  # never trained again
        taken = [(p.number, p.rung) for p in self.promoting.values()] + failed
        due = promotions(rung_entries(self.study), self.settings.fidelity.eta, len(self.rung_epochs) - 1, taken)
        return due[0] if due else None

    def _submit_rung(self, number: int, rung: int) -> None:
        cfg = TrialRecord.of(self.study.get_trials(deepcopy=False)[number]).config
        handle = self._pool().submit(number, cfg, self.settings, self.shared, rung)
        self.promoting[handle] = _Promotion(number, rung, time.monotonic())

    def _collect(self) -> None:
        pool = self._pool()
        for handle in pool.wait([*self.in_flight, *self.promoting], timeout=1.0):
            if handle in self.promoting:
                self._collect_rung(handle)
                continue
            trial, key, _ = self.in_flight.pop(handle)
            try:
                evaluation: Evaluation = pool.result(handle)
            except Exception as error:  # the trial's own failure: record it, the search goes on
                self._failed(trial, key, describe_failure(error))
            else:
                assert isinstance(evaluation.record, TrialRecord)
                self._finish(trial, key, evaluation.record, evaluation.weights)
        if self.options.trial_timeout is not None:
            now = time.monotonic()
            for handle, (trial, key, submitted) in list(self.in_flight.items()):
                if now - submitted > self.options.trial_timeout:
                    pool.cancel(handle)
                    del self.in_flight[handle]
                    self._failed(trial, key, f"timeout: ran longer than {self.options.trial_timeout:g} s")
            for handle, promotion in list(self.promoting.items()):
                # A rung trains eta^k times the proxy's epochs: its time limit grows with it.
                limit = self.options.trial_timeout * self.rung_epochs[promotion.rung] / self.rung_epochs[0]
                if now - promotion.submitted > limit:
                    pool.cancel(handle)
                    del self.promoting[handle]
                    self._record_rung(promotion, None, f"timeout: ran longer than {limit:g} s")

    def _collect_rung(self, handle: Any) -> None:
        promotion = self.promoting.pop(handle)
        try:
            evaluation: Evaluation = self._pool().result(handle)
        except Exception as error:  # the training's own failure: recorded, never trained again
            self._record_rung(promotion, None, describe_failure(error))
            return
        assert isinstance(evaluation.record, RungResult)
        self._record_rung(promotion, evaluation)

    def _record_rung(self, promotion: _Promotion, evaluation: Evaluation | None, failure: str | None = None) -> None:
        """Save a rung's weights, then record its result in the study: a recorded rung always has its weights."""
        if evaluation is None:
            epochs = self.rung_epochs[promotion.rung]
            seconds = time.monotonic() - promotion.submitted
            result = RungResult(promotion.number, promotion.rung, epochs, None, seconds, failure=failure)
        else:
            assert isinstance(evaluation.record, RungResult)
            result = evaluation.record
            if evaluation.weights is not None:
                path = run_folder.weights_path(self.run_dir, result.trial, rung=result.rung)
                with atomic_path(path) as tmp:
                    torch.save(evaluation.weights, tmp)
        self.study.set_user_attr(result.key, result.to_dict())
        if self.progress:
            self.progress(SearchProgress.of(self.study, result.trial, result))

    def _started(self) -> int:
        return self.finished + len(self.in_flight) + sum(len(trials) for trials in self.waiting.values())

    def _finish(
        self, trial: optuna.Trial, key: str, record: TrialRecord, weights: dict[str, torch.Tensor] | None = None
    ) -> None:
        record = dataclasses.replace(record, trial_number=trial.number)
        if weights is not None and record.feasible and not record.failure:
            # Saved before the study is told, so a told feasible trial always has its weights. A kill (or a
            # full disk, which stops the search) in between leaves the trial RUNNING, run again on resume.
            with atomic_path(run_folder.weights_path(self.run_dir, trial.number)) as tmp:
                torch.save(weights, tmp)
        _tell(self.study, trial, record, self.settings.budget_ms)
        self._count(trial.number, record)
        if not record.failure:
            self.evaluated[key] = record
        for duplicate, cfg in self.waiting.pop(key, []):
            if record.failure:  # the original failed: the repeat gets its own evaluation
                self._submit(duplicate, key, cfg)
            else:
                self._finish_duplicate(duplicate, key, record)

    def _failed(self, trial: optuna.Trial, key: str, reason: str) -> None:
        failed = TrialRecord(failure=reason[:500])
        _tell(self.study, trial, failed, self.settings.budget_ms)
        self._count(trial.number, failed)
        for duplicate, cfg in self.waiting.pop(key, []):
            self._submit(duplicate, key, cfg)

    def _finish_duplicate(self, trial: optuna.Trial, key: str, original: TrialRecord) -> None:
        reused = ("params", "flops", "latency", "feasible", "accuracy", "proxy_resolution", "node", "hardware")
        copied = {name: getattr(original, name) for name in reused}
        record = TrialRecord(**copied, duration_s=0.0, duplicate_of=original.trial_number)
        self._finish(trial, key, record)

    def _count(self, number: int, record: TrialRecord) -> None:
        self.finished += 1
        if self.progress:
            self.progress(SearchProgress.of(self.study, number, record))


def make_executor(settings: SearchSettings, options: RunOptions, function: Callable[..., Any] = evaluate) -> Executor:
    """The executor ``options`` ask for, running ``function`` (a trial's :func:`evaluate`, or the
    verification's training job); on ``cuda``, each Ray task asks for its share of a GPU."""
    if options.executor == "local":
        return LocalExecutor(function)
    gpus = options.gpus_per_trial if settings.latency.device == "cuda" else 0.0
    cpus = settings.proxy.threads
    return RayExecutor(function, options.workers, cpus, options.address, gpus_per_call=gpus)


def _latency_table(settings: SearchSettings, run_dir: Path) -> LatencyTable | None:
    """The run's latency predictor: copied into the run folder at its start, read from there on resume."""
    if settings.latency_source != "predicted":
        return None
    from mvit_nas.predictor import LatencyTable, load_table

    table_file = run_dir / run_folder.LATENCY_TABLE_FILE
    if table_file.exists():
        return LatencyTable.load(table_file, settings.latency)
    return load_table(settings.latency)  # missing or mismatched: an error before anything is written


def _calibrate(study: optuna.Study, settings: SearchSettings, address: str | None) -> Calibration | None:
    """Time the references quietly, now (at every start and resume), and record it in the study; the run
    judges by the quietest of its calibrations (:func:`~mvit_nas.run.judging_calibration`).

    None where the driver cannot time the workers' device (a cluster's driver, a predicted
    run): the workers then calibrate on their own.
    """
    if settings.latency_source != "measured" or address is not None:
        return None
    try:
        check_available(settings.latency)
    except InputError:
        return None
    calibration = calibrate(settings.latency, device_lock(settings.latency.device))
    return run_folder.judging_calibration(study, calibration, settings.latency)


def _prepare(
    settings: SearchSettings, run_dir: Path, data: ProxyData | None, address: str | None = None
) -> tuple[optuna.Study, WorkerInputs]:
    """Create or resume the run folder: its study, and the inputs every evaluation needs."""
    run_folder.check_storage(run_dir)
    if data is None:  # the generated dataset is cached in the run folder, which only the driver reads
        cache_dir = run_dir / run_folder.DATA_DIR
        data = settings.load_data(cache_dir)
    table = _latency_table(settings, run_dir)
    run_folder.write_settings(run_dir, settings)
    table_file = run_dir / run_folder.LATENCY_TABLE_FILE
    if table is not None and not table_file.exists():
        table.save(table_file)
    study = run_folder.open_study(run_dir)
    # A resumed run's sampler is seeded anew, so that it does not re-propose what the run evaluated.
    study.sampler = settings.make_sampler(resumed_at=len(study.get_trials(deepcopy=False)))
    calibration = _calibrate(study, settings, address)
    if not study.get_trials(deepcopy=False):
        # Judged here, before any trial starts: a few short measurements, or the run's latency table.
        seeds = fitted_seeds(settings, table, data.num_classes, calibration)
        _enqueue_seeds(study, settings.search_space(), seeds)
    _requeue_interrupted(study)
    return study, WorkerInputs(data, table, calibration)


def search(
    settings: SearchSettings,
    run_dir: str | Path,
    trials: int = DEFAULT_TRIALS,
    *,
    progress: Callable[[SearchProgress], None] | None = None,
    **options: Any,
) -> SearchOutcome:
    """Run (or resume) a search until the run holds ``trials`` finished trials.

    Re-running with the same ``run_dir`` resumes: finished trials are kept as they
    are, interrupted ones are run again. ``options`` are the fields of
    :class:`~mvit_nas.settings.RunOptions` (``timeout``, ``workers``, ``address``,
    ``executor``, ``trial_timeout``). ``progress`` is called with a
    :class:`SearchProgress` after every finished trial.
    """
    run_options = RunOptions(trials=trials, **options)
    run_dir = Path(run_dir)
    settings.search_space()  # bad input is refused before anything is written
    dataset_spec = settings.dataset_spec()
    data = None if dataset_spec.kind == "synthetic" else settings.load_data()
    run_folder.check_free_space(run_dir)
    writable_folder(run_dir, "--run-dir")
    with run_folder.exclusive(run_dir):
        study, inputs = _prepare(settings, run_dir, data, run_options.address)
        return _Driver(study, settings, run_dir, inputs, run_options, progress).run()
