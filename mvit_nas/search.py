"""The search: an Optuna study over a space, evaluations on Ray, under a latency budget.

Optuna is the single source of truth. The study lives in the run folder
(``study.db``, SQLite: transactional, so a kill never leaves half a trial, and
optuna-dashboard opens it), the seeds xxs/xs/s are enqueued as trials 0-2, the
budget is a constraint (``Trial.set_constraint``), and the front is
``study.best_trials``. A small driver loop asks Optuna for trials and runs the
evaluations as Ray tasks (Ray Tune's own experiment state would be a second
source of truth to reconcile on resume; its ``OptunaSearch`` cannot pass
constraints either).

One evaluation: closed-form cost; latency, measured with the device to itself
(an exclusive :class:`~mvit_nas.latency.DeviceLock` that training steps share);
then the accuracy proxy, only when the latency fits the budget.

Example::

    from mvit_nas.search import SearchSettings, search
    outcome = search(SearchSettings(budget_ms=5.0), run_dir="runs/demo", trials=30)
    for trial in outcome.front:
        print(trial.number, trial.values)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.cost import count_cost
from mvit_nas.data import DatasetSpec, load_dataset, parse_dataset_spec
from mvit_nas.errors import InputError, writable_folder
from mvit_nas.latency import DeviceLock, LatencySpec, measure_config
from mvit_nas.proxy import ProxySpec, TrialFailed, evaluate_proxy
from mvit_nas.space import SearchSpace, load_space, parse_space

STUDY_NAME = "mvit-nas"
STORAGE_FILE = "study.db"
SETTINGS_FILE = "run.yaml"
LOCK_FILE = ".search.lock"
DEVICE_LOCK_FILE = ".device.lock"
LATENCY_TABLE_FILE = "latency_table.json"  # the predictor a run uses, copied in at its start
# Study rows, the generated dataset's cache (~160 MiB at 64 px) and the exports
# (an ONNX file and a state dict per front point) fit well inside this.
MIN_FREE_MIB = 256
OBJECTIVES = ("accuracy", "latency_ms")
INTERRUPTED = "interrupted"
FAULT_ENV = "MVIT_NAS_TEST_FAULTS"  # test-only fault injection, see _inject_fault
FAULT_LOG_ENV = "MVIT_NAS_TEST_FAULT_LOG"  # test-only: a file where each injected fault is logged


@dataclass(frozen=True)
class SearchSettings:
    """Everything that determines a search's results; fixed for the life of a run folder."""

    budget_ms: float
    space: dict[str, Any] | None = None  # the space file's content; None = the bundled default
    latency: LatencySpec = field(default_factory=LatencySpec)
    proxy: ProxySpec = field(default_factory=ProxySpec)
    dataset: str = "synthetic"
    sampler: str = "tpe"
    seed: int = 0
    latency_source: str = "measured"  # "measured" | "predicted" (from the device's latency table)

    def __post_init__(self) -> None:
        if self.latency_source not in ("measured", "predicted"):
            raise InputError("--latency", f"must be measured or predicted, got {self.latency_source!r}")
        if isinstance(self.budget_ms, bool) or not isinstance(self.budget_ms, (int, float)):
            raise InputError("--budget-ms", f"must be a positive number of milliseconds, got {self.budget_ms!r}")
        if not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise InputError("--budget-ms", f"must be a positive number of milliseconds, got {self.budget_ms!r}")
        if self.sampler not in SAMPLERS:
            raise InputError("--sampler", f"must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")

    def search_space(self) -> SearchSpace:
        return load_space() if self.space is None else parse_space(self.space)

    def dataset_spec(self) -> DatasetSpec:
        return parse_dataset_spec(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_ms": self.budget_ms,
            "space": self.space,
            "latency": self.latency.to_dict(),
            "proxy": self.proxy.to_dict(),
            "dataset": self.dataset,
            "sampler": self.sampler,
            "seed": self.seed,
            "latency_source": self.latency_source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        return cls(
            budget_ms=data["budget_ms"],
            space=data["space"],
            latency=LatencySpec.from_dict(data["latency"]),
            proxy=ProxySpec.from_dict(data["proxy"]),
            dataset=data["dataset"],
            sampler=data["sampler"],
            seed=data["seed"],
            latency_source=data.get("latency_source", "measured"),
        )


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


def _nsga2(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)


def _random(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {"tpe": _tpe, "nsga2": _nsga2, "random": _random}


# --- one evaluation (runs on a Ray worker, or in-process) ---------------------------


@functools.lru_cache(maxsize=2)
def _dataset(spec: DatasetSpec, resolution: int, cache_dir: str) -> Any:
    # Ray reuses worker processes, so each worker generates or reads the data once.
    return load_dataset(spec, resolution, cache_dir=Path(cache_dir))


@functools.lru_cache(maxsize=1)
def _latency_table(path: str, spec: LatencySpec) -> Any:
    from mvit_nas.predictor import load_table

    return load_table(spec, path)


def measure_front(run_dir: str | Path) -> list[dict[str, Any]]:
    """Measure every front point directly and write ``front_latency.json`` (predicted next to measured).

    A search with ``latency_source="predicted"`` never measures during the search;
    this is where its front meets the device.
    """
    from mvit_nas.pareto import front

    run_dir = Path(run_dir)
    settings = load_settings(run_dir)
    rows = []
    for trial in front(open_study(run_dir)):
        cfg = ArchConfig.from_dict(trial.user_attrs["config"])
        spec = dataclasses.replace(settings.latency, height=cfg.resolution, width=cfg.resolution)
        measured = measure_config(cfg, spec).median_ms
        predicted = trial.user_attrs["latency"]["median"]
        rows.append(
            {
                "trial": trial.number,
                "predicted_ms": predicted,
                "measured_ms": measured,
                "error_pct": 100 * (predicted - measured) / measured,
                "within_budget": measured <= settings.budget_ms,
            }
        )
    path = run_dir / "front_latency.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, path)
    return rows


def _inject_fault(trial_number: int, proxy: ProxySpec) -> ProxySpec:
    """Test-only hook: ``MVIT_NAS_TEST_FAULTS="3:raise,5:nan,..."`` makes trial 3 raise, and so on.

    Faults are real: ``raise`` raises, ``nan`` trains with a learning rate of 1e12
    so that the loss really diverges, ``oom`` allocates far more memory than the
    machine has, ``sleep`` sleeps past any trial timeout, ``kill`` SIGKILLs the
    worker process running the trial.

    With ``MVIT_NAS_TEST_FAULT_LOG=FILE`` each fault first appends ``"<trial> <fault> <pid>"``
    to FILE, so a test can tell how often (and in which processes) a trial was attempted.
    """
    faults = dict(item.split(":", 1) for item in os.environ.get(FAULT_ENV, "").split(",") if ":" in item)
    fault = faults.get(str(trial_number))
    log = os.environ.get(FAULT_LOG_ENV)
    if fault and log:
        with open(log, "a") as handle:
            handle.write(f"{trial_number} {fault} {os.getpid()}\n")
    if fault == "raise":
        raise RuntimeError(f"injected fault in trial {trial_number}")
    if fault == "oom":
        import torch

        torch.empty(1 << 42, dtype=torch.uint8).fill_(1)  # 4 TiB: a real allocation failure
    if fault == "sleep":
        time.sleep(3600)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "nan":
        return dataclasses.replace(proxy, lr=1e12, warmup_fraction=0.0)
    return proxy


def evaluate(trial_number: int, config: dict[str, Any], settings: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Evaluate one architecture: cost, latency, then (if within budget) the accuracy proxy.

    Returns a plain dict (what the driver records in the trial's user attributes).
    A proxy failure (divergence, out of memory) is returned as ``failure``; any
    other exception propagates and the driver records it.
    """
    started = time.perf_counter()
    run_settings = SearchSettings.from_dict(settings)
    cfg = ArchConfig.from_dict(config)
    proxy_spec = _inject_fault(trial_number, run_settings.proxy)
    cost = count_cost(cfg)
    lock = DeviceLock(Path(run_dir) / DEVICE_LOCK_FILE)
    spec = dataclasses.replace(run_settings.latency, height=cfg.resolution, width=cfg.resolution)
    if run_settings.latency_source == "predicted":
        table_path = str(Path(run_dir) / LATENCY_TABLE_FILE)
        predicted = _latency_table(table_path, run_settings.latency).predict(cfg)
        stats = {"median": predicted, "p10": predicted, "p90": predicted, "mean": predicted, "n": 0}
        latency = {**stats, **spec.to_dict(), "peak_memory_mb": None, "predicted": True}
    else:
        # Export and session set-up hold the device too: on a CPU they would slow another worker's timing.
        with lock.exclusive():
            latency = measure_config(cfg, spec).to_dict()
    result: dict[str, Any] = {
        "params": cost.params,
        "flops": cost.flops,
        "latency": latency,
        "feasible": latency["median"] <= run_settings.budget_ms,
        "accuracy": None,
        "failure": None,
    }
    if result["feasible"]:
        data = _dataset(run_settings.dataset_spec(), run_settings.proxy.resolution, str(Path(run_dir) / "data"))
        try:
            proxy = evaluate_proxy(cfg, proxy_spec, data, step_guard=lock.shared)
            result["accuracy"] = proxy.score
            result["proxy_seconds"] = proxy.seconds
        except TrialFailed as error:
            result["failure"] = error.reason
        except (MemoryError, RuntimeError) as error:
            if "memory" not in str(error).lower() and not isinstance(error, MemoryError):
                raise
            result["failure"] = f"out of memory: {error}".splitlines()[0][:300]
    result["duration_s"] = time.perf_counter() - started
    return result


# --- executors -----------------------------------------------------------------------


class LocalExecutor:
    """Runs evaluations in this process, one at a time (tests, benchmarks, no Ray)."""

    def __init__(self) -> None:
        self._done: dict[int, Callable[[], dict[str, Any]]] = {}
        self._next = 0

    def submit(self, *args: Any) -> int:
        handle, self._next = self._next, self._next + 1
        try:
            result = evaluate(*args)
            self._done[handle] = lambda: result
        except Exception as error:
            self._done[handle] = functools.partial(_reraise, error)
        return handle

    def wait(self, handles: list[int], timeout: float | None) -> list[int]:
        return [handle for handle in handles if handle in self._done]

    def result(self, handle: int) -> dict[str, Any]:
        return self._done.pop(handle)()

    def cancel(self, handle: int) -> None:
        self._done.pop(handle, None)

    def shutdown(self) -> None:
        pass


def _reraise(error: Exception) -> dict[str, Any]:
    raise error


class RayExecutor:
    """Runs evaluations as Ray tasks, ``cpus_per_trial`` CPUs each.

    Without ``address`` it starts a private Ray on this machine that listens on
    127.0.0.1 only (an open Ray port lets anyone who reaches it run code,
    CVE-2023-48022); with ``address`` it joins that cluster, whose nodes must have
    mvit-nas installed.
    """

    def __init__(self, workers: int, cpus_per_trial: int, address: str | None = None) -> None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        self._ray = ray
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            # "local": a new private instance even where `ray start` left a cluster running on this
            # machine, which ray.init() without an address would join.
            ray.init(
                address="local",
                num_cpus=workers * cpus_per_trial,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level="ERROR",
                log_to_driver=False,
            )
        # A worker killed mid-trial (SIGKILL, node loss) is retried once, then the trial fails.
        self._evaluate = ray.remote(num_cpus=cpus_per_trial, max_retries=1, retry_exceptions=False)(evaluate)

    def submit(self, *args: Any) -> Any:
        return self._evaluate.remote(*args)

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        done, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as error:
            raise error.as_instanceof_cause() from None

    def cancel(self, handle: Any) -> None:
        self._ray.cancel(handle, force=True)

    def shutdown(self) -> None:
        self._ray.shutdown()


# --- the run folder ------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive_run(run_dir: Path) -> Iterator[None]:
    """One search per run folder at a time: a second one is refused, naming the run."""
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole search
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        message = f"{run_dir} is in use by another search; wait for it or pick another folder"
        raise InputError("--run-dir", message) from None
    try:
        yield
    finally:
        handle.close()


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STORAGE_FILE).resolve()}"


def _settings_path(run_dir: Path) -> Path:
    return run_dir / SETTINGS_FILE


def _prepare_run(run_dir: Path, settings: SearchSettings) -> None:
    """Create the run folder, or check that an existing one was started with these settings."""
    path = _settings_path(run_dir)
    if path.exists():
        try:
            existing = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            message = f"{path} is unreadable ({type(error).__name__}); nothing was changed"
            raise InputError("--run-dir", message) from None
        if not isinstance(existing, dict):
            raise InputError("--run-dir", f"{path} is not a run settings file; nothing was changed")
        if existing != settings.to_dict():
            changed = sorted(key for key in settings.to_dict() if existing.get(key) != settings.to_dict()[key])
            raise InputError(
                "--run-dir",
                f"{run_dir} was started with other settings ({', '.join(changed)} differ); "
                "rerun with the original options or pick another folder",
            )
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def open_study(run_dir: str | Path, settings: SearchSettings | None = None) -> optuna.Study:
    """Open the run's study (creating it, with the seeds enqueued, when ``settings`` is new)."""
    run_dir = Path(run_dir)
    if settings is None:
        if not (run_dir / STORAGE_FILE).exists() or not _settings_path(run_dir).exists():
            raise InputError("--run-dir", f"{run_dir} holds no mvit-nas run (no {STORAGE_FILE} and {SETTINGS_FILE})")
        settings = load_settings(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = SAMPLERS[settings.sampler](settings.seed)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir), sampler=sampler)
    except KeyError:
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage_url(run_dir),
            sampler=sampler,
            directions=["maximize", "minimize"],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
        space = settings.search_space()
        for name in PRESETS:  # a custom space may leave some seeds out
            if space.contains(preset(name)):
                study.enqueue_trial(space.params_of(preset(name)), user_attrs={"seed": name})
    return study


def load_settings(run_dir: str | Path) -> SearchSettings:
    return SearchSettings.from_dict(yaml.safe_load(_settings_path(Path(run_dir)).read_text()))


def config_key(cfg: ArchConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def is_finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards ``--trials``: evaluated to the end, successfully or not."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("failure") != INTERRUPTED


def _requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed driver are failed as interrupted and enqueued again."""
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.WAITING}
    count = 0
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        if trial.number not in queued:  # a kill between these two calls must not queue it twice
            attrs = {"retry_of": trial.number}
            if "seed" in trial.user_attrs:
                attrs["seed"] = trial.user_attrs["seed"]
            # A trial killed before it took its enqueued parameters has them only as fixed_params.
            params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        study._storage.set_trial_user_attr(trial._trial_id, "failure", INTERRUPTED)  # no public setter
        study.tell(trial.number, state=TrialState.FAIL)
        count += 1
    return count


# --- the driver ----------------------------------------------------------------------


@dataclass
class SearchOutcome:
    run_dir: Path
    study: optuna.Study
    finished: int
    interrupted: bool

    @property
    def front(self) -> list[FrozenTrial]:
        return self.study.best_trials


@dataclass(frozen=True)
class RunOptions:
    """How long and on what a search runs; unlike :class:`SearchSettings`, free to change on resume."""

    trials: int = 30
    timeout: float | None = None
    workers: int = 2
    address: str | None = None
    executor: str = "ray"  # "ray" | "local" (in-process, one at a time)
    trial_timeout: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("--trials", self.trials), ("--workers", self.workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, f"must be a positive integer, got {value!r}")
        for name, value in (("--timeout", self.timeout), ("--trial-timeout", self.trial_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise InputError(name, f"must be a positive number of seconds, got {value!r}")
        if self.executor not in ("ray", "local"):
            raise InputError("executor", f"must be ray or local, got {self.executor!r}")
        if self.executor == "local" and self.trial_timeout is not None:
            raise InputError("--trial-timeout", "needs the Ray executor: in-process trials cannot be stopped")


def _tell(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any], budget_ms: float) -> None:
    for key, value in result.items():
        trial.set_user_attr(key, value)
    if result.get("failure"):
        study.tell(trial, state=TrialState.FAIL)
        return
    latency_ms = result["latency"]["median"]
    trial.set_constraint("latency_over_budget_ms", latency_ms - budget_ms)
    # An over-budget trial was never trained: accuracy 0 keeps it off every front.
    accuracy = result["accuracy"] if result["feasible"] else 0.0
    study.tell(trial, [accuracy, latency_ms])


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("failure", reason[:500])
    study.tell(trial, state=TrialState.FAIL)


def search(
    settings: SearchSettings,
    run_dir: str | Path,
    trials: int = 30,
    *,
    progress: Callable[[optuna.Study], None] | None = None,
    **options: Any,
) -> SearchOutcome:
    """Run (or resume) a search until the run holds ``trials`` finished trials.

    Re-running with the same ``run_dir`` resumes: finished trials are kept as they
    are, interrupted ones are run again. ``options`` are the fields of
    :class:`RunOptions` (``timeout``, ``workers``, ``address``, ``executor``,
    ``trial_timeout``). ``progress`` is called with the study after every
    finished trial.
    """
    run = RunOptions(trials=trials, **options)
    run_dir = Path(run_dir)
    space = settings.search_space()
    dataset_spec = settings.dataset_spec()
    # A real dataset is checked (path, layout) before anything is written; the generated
    # one is made inside the run folder, where it is cached for the workers.
    data = None if dataset_spec.kind == "synthetic" else load_dataset(dataset_spec, settings.proxy.resolution)
    existing = next(folder for folder in (run_dir, *run_dir.absolute().parents) if folder.exists())
    free_mib = shutil.disk_usage(existing).free / 2**20
    if free_mib < MIN_FREE_MIB:
        # Refused up front: a disk that fills mid-run fails a storage write after the work is done.
        raise InputError("--run-dir", f"{run_dir} has {free_mib:.0f} MiB free; a search needs {MIN_FREE_MIB} MiB")
    writable_folder(run_dir, "--run-dir")
    with _exclusive_run(run_dir):
        _check_storage(run_dir)
        if data is None:
            data = load_dataset(dataset_spec, settings.proxy.resolution, cache_dir=run_dir / "data")
        table = None
        if settings.latency_source == "predicted" and not (run_dir / LATENCY_TABLE_FILE).exists():
            from mvit_nas.predictor import load_table

            table = load_table(settings.latency)  # missing or mismatched: an error before anything is written
        _prepare_run(run_dir, settings)
        if table is not None:
            table.save(run_dir / LATENCY_TABLE_FILE)
        study = open_study(run_dir, settings)
        _requeue_interrupted(study)
        return _Driver(study, space, settings, run_dir, data.num_classes, run, progress).run()


def _check_storage(run_dir: Path) -> None:
    """A study file that is not a sound SQLite database stops the search before any work.

    An empty file (a kill while it was being created) is no study yet. The check opens
    the file read-write, so a journal left by a kill mid-commit is rolled back, as
    SQLite intends, instead of making the run look corrupted.
    """
    path = run_dir / STORAGE_FILE
    if not path.exists() or path.stat().st_size == 0:
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.text_factory = lambda data: data.decode("utf-8", "replace")
            verdict = connection.execute("PRAGMA integrity_check").fetchall()
            connection.execute("SELECT COUNT(*) FROM trials").fetchall()
    except sqlite3.Error as error:
        verdict = [(str(error),)]
    if verdict != [("ok",)]:
        problem = str(verdict[0][0])[:200]
        raise InputError("--run-dir", f"{path} is corrupted or not an Optuna study ({problem}); nothing was changed")


class _Driver:
    """Keeps ``workers`` evaluations in flight and tells Optuna each result as it lands."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        settings: SearchSettings,
        run_dir: Path,
        num_classes: int,
        run: RunOptions,
        progress: Callable[[optuna.Study], None] | None,
    ) -> None:
        self.study, self.space, self.settings, self.run_dir = study, space, settings, run_dir
        self.num_classes, self.options, self.progress = num_classes, run, progress
        history = study.get_trials(deepcopy=False)
        self.finished = sum(is_finished(t) for t in history)
        # config key -> the finished trial's result, so a repeated config is not evaluated twice
        self.evaluated = {
            t.user_attrs["config_key"]: t.user_attrs
            for t in history
            if t.state == TrialState.COMPLETE and "config_key" in t.user_attrs
        }
        self.in_flight: dict[Any, tuple[optuna.Trial, float]] = {}
        # config key -> trials asked for a config that is being evaluated right now
        self.waiting: dict[str, list[optuna.Trial]] = {}
        self.pool: LocalExecutor | RayExecutor | None = None

    def run(self) -> SearchOutcome:
        started = time.monotonic()
        interrupted = False
        try:
            while True:
                timed_out = self.options.timeout is not None and time.monotonic() - started > self.options.timeout
                while (
                    not timed_out
                    and len(self.in_flight) < self.options.workers
                    and self._started() < self.options.trials
                ):
                    self._start_trial()
                if not self.in_flight:
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
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("config_key", key)
        if key in self.evaluated:  # already evaluated in this run: reuse, don't re-measure or re-train
            self._finish_duplicate(trial, self.evaluated[key])
            return
        if any(t.user_attrs.get("config_key") == key for t, _ in self.in_flight.values()):
            self.waiting.setdefault(key, []).append(trial)
            return
        self._submit(trial, cfg)

    def _submit(self, trial: optuna.Trial, cfg: ArchConfig) -> None:
        if self.pool is None:
            if self.options.executor == "local":
                self.pool = LocalExecutor()
            else:
                self.pool = RayExecutor(self.options.workers, self.settings.proxy.threads, self.options.address)
        handle = self.pool.submit(trial.number, cfg.to_dict(), self.settings.to_dict(), str(self.run_dir))
        self.in_flight[handle] = (trial, time.monotonic())

    def _collect(self) -> None:
        assert self.pool is not None
        for handle in self.pool.wait(list(self.in_flight), timeout=1.0):
            trial, _ = self.in_flight.pop(handle)
            try:
                result = self.pool.result(handle)
            except Exception as error:  # the trial's own failure: record it, the search goes on
                self._failed(trial, _describe(error))
            else:
                self._finish(trial, result)
        if self.options.trial_timeout is not None:
            now = time.monotonic()
            for handle, (trial, submitted) in list(self.in_flight.items()):
                if now - submitted > self.options.trial_timeout:
                    self.pool.cancel(handle)
                    del self.in_flight[handle]
                    self._failed(trial, f"timeout: ran longer than {self.options.trial_timeout:g} s")

    def _started(self) -> int:
        return self.finished + len(self.in_flight) + sum(len(trials) for trials in self.waiting.values())

    def _finish(self, trial: optuna.Trial, result: dict[str, Any]) -> None:
        result = {**result, "trial_number": trial.number}
        _tell(self.study, trial, result, self.settings.budget_ms)
        self._count()
        key = trial.user_attrs["config_key"]
        if not result.get("failure"):
            self.evaluated[key] = result
        for duplicate in self.waiting.pop(key, []):
            if result.get("failure"):  # the original failed: the repeat gets its own evaluation
                self._submit(duplicate, ArchConfig.from_dict(duplicate.user_attrs["config"]))
            else:
                self._finish_duplicate(duplicate, result)

    def _failed(self, trial: optuna.Trial, reason: str) -> None:
        _fail(self.study, trial, reason)
        self._count()
        for duplicate in self.waiting.pop(trial.user_attrs["config_key"], []):
            self._submit(duplicate, ArchConfig.from_dict(duplicate.user_attrs["config"]))

    def _finish_duplicate(self, trial: optuna.Trial, original: dict[str, Any]) -> None:
        result = {k: original.get(k) for k in ("params", "flops", "latency", "feasible", "accuracy")}
        trial.set_user_attr("duplicate_of", original.get("trial_number"))
        self._finish(trial, result | {"failure": None, "duration_s": 0.0})

    def _count(self) -> None:
        self.finished += 1
        if self.progress:
            self.progress(self.study)


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    if "OutOfMemory" in name or isinstance(error, MemoryError):
        return f"out of memory: {error}".splitlines()[0]
    if "WorkerCrashed" in name or "WorkerDied" in name:
        return "worker died: the process running the trial was killed (retried once)"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"error: {name}: {first_line}"[:500]
