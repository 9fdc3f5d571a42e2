"""The run folder: its file names, settings file, locks and study, and the one record of a trial.

A run folder holds the Optuna study (``study.db``, SQLite: transactional, so a
kill never leaves half a trial, and optuna-dashboard opens it), the settings it
was started with (``run.yaml``) and the exports. Only the search driver writes
it, and only through this module or :mod:`mvit_nas.atomic`. What a trial
recorded is a :class:`TrialRecord`, the only thing written to and read from a
trial's user attributes.

Example:

>>> record = TrialRecord(config=preset("xxs"), seed="xxs")
>>> TrialRecord.from_user_attrs(record.user_attrs()) == record
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import shutil
import sqlite3
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import yaml
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.atomic import write_text
from mvit_nas.config import ArchConfig
from mvit_nas.latency import Calibration, LatencySpec, LatencyStats, quietest
from mvit_nas.settings import SearchSettings
from mvit_nas.validate import InputError, first_line

STUDY_NAME = "mvit-nas"
STORAGE_FILE = "study.db"
SETTINGS_FILE = "run.yaml"
LOCK_FILE = ".search.lock"
LATENCY_TABLE_FILE = "latency_table.json"  # the predictor a run uses, copied in at its start
CALIBRATIONS_ATTR = "latency_calibrations"  # study attribute: the references timed at every start, resume, check
FRONT_DROPPED_ATTR = "front_dropped"  # study attribute: {trial number: why its final re-measurement dropped it}
FRONT_LATENCY_FILE = "front_latency.json"  # the front re-measured at the end of a search
DATA_DIR = "data"  # the generated dataset's cache
WEIGHTS_DIR = "weights"  # weights/trial_0007.pt (proxy), trial_0007.rung1.pt (halving), trial_0007.verified.pt
VERIFY_FILE = "verify.json"  # the verification stage's results, one entry per (trial, training seed)
# Study rows, the generated dataset's cache (~160 MiB at 64 px) and the exports
# (an ONNX file and a state dict per front point) fit well inside this.
MIN_FREE_MIB = 256
OBJECTIVES = ("accuracy", "latency_ms")
DIRECTIONS = ("maximize", "minimize")
CONSTRAINT = "latency_over_budget_ms"  # feasible iff <= 0 (Optuna's rule)
INTERRUPTED = "interrupted"  # the failure reason of a trial a killed driver left running


def trial_stem(number: int) -> str:
    """File stem of a trial's files (``trial_0007``): weights, configs, ONNX and timm exports."""
    return f"trial_{number:04d}"


def weights_path(run_dir: Path, number: int, verified: bool = False, rung: int = 0) -> Path:
    """Where trial ``number``'s trained weights live: proxy-trained (rung 0), from a longer rung of
    successive halving (``trial_0007.rung2.pt``), or from the verification stage."""
    suffix = ".verified" if verified else f".rung{rung}" if rung else ""
    return Path(run_dir) / WEIGHTS_DIR / f"{trial_stem(number)}{suffix}.pt"


def config_key(cfg: ArchConfig) -> str:
    """A short digest of the whole config: equal keys, equal architectures (and training settings)."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# --- the trial record --------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRecord:
    """What one trial recorded; written to and read from its Optuna user attributes, key for key.

    Tags (``config``, ``config_key``, ``seed``, ``retry_of``, ``duplicate_of``) are set
    when the trial is asked or enqueued; the evaluation fields come back from a worker
    (which returns a record with only those set). ``trial_number`` is the trial that
    ran the evaluation (a duplicate reuses another's), ``accuracy`` is None when the
    model was not trained (over budget), ``failure`` a one-line reason.
    """

    config: ArchConfig | None = None
    config_key: str | None = None
    seed: str | None = None  # the preset (xxs, xs, s) this trial evaluates
    retry_of: int | None = None
    duplicate_of: int | None = None
    trial_number: int | None = None
    params: int | None = None
    flops: int | None = None
    latency: LatencyStats | None = None
    feasible: bool | None = None
    accuracy: float | None = None
    proxy_seconds: float | None = None
    proxy_resolution: int | None = None  # the input size (px) the proxy trained and scored at
    duration_s: float | None = None
    failure: str | None = None
    node: str | None = None  # the machine that evaluated it: host name and Ray node id
    hardware: str | None = None  # the device it was measured and trained on, e.g. "cpu: AMD EPYC 7B13"

    @property
    def evaluated(self) -> bool:
        return self.latency is not None

    def user_attrs(self) -> dict[str, Any]:
        """Plain JSON-able attributes. An evaluated record writes every evaluation field, None included."""
        always = ("params", "flops", "latency", "feasible", "accuracy", "failure", "duration_s", "trial_number")
        attrs: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None and not (self.evaluated and item.name in always):
                continue
            if isinstance(value, (ArchConfig, LatencyStats)):
                value = value.to_dict()
            attrs[item.name] = value
        return attrs

    @classmethod
    def from_user_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        known = {item.name for item in dataclasses.fields(cls)}
        fields = {key: value for key, value in attrs.items() if key in known}
        if fields.get("config") is not None:
            fields["config"] = ArchConfig.from_dict(fields["config"])
        if fields.get("latency") is not None:
            fields["latency"] = LatencyStats.from_dict(fields["latency"])
        return cls(**fields)

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a trial read from a study."""
        return cls.from_user_attrs(trial.user_attrs)

    def write(self, trial: optuna.Trial) -> None:
        """Set this record's attributes on a running trial."""
        for key, value in self.user_attrs().items():
            trial.set_user_attr(key, value)


def is_finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards ``--trials``: evaluated to the end, successfully or not."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("failure") != INTERRUPTED


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's own rule: every constraint value <= 0 (a trial without constraints is feasible)."""
    return all(value <= 0.0 for value in trial.constraints.values())


# --- the folder --------------------------------------------------------------------------


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / STORAGE_FILE).resolve()}"


def check_free_space(run_dir: Path) -> None:
    """Refuse a run folder on a nearly full disk up front: a disk that fills mid-run fails after the work."""
    existing = next(folder for folder in (run_dir, *run_dir.absolute().parents) if folder.exists())
    free_mib = shutil.disk_usage(existing).free / 2**20
    if free_mib < MIN_FREE_MIB:
        raise InputError("--run-dir", f"{run_dir} has {free_mib:.0f} MiB free; a search needs {MIN_FREE_MIB} MiB")


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
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


def check_storage(run_dir: Path) -> None:
    """A study file that is not a sound SQLite database stops the search before any work.

    An empty file (a kill while it was being created) is no study yet. The check opens
    the file read-write, so a journal left by a kill mid-commit is rolled back, as
    SQLite intends, instead of making the run look corrupted.
    """
    path = run_dir / STORAGE_FILE
    if not path.exists() or path.stat().st_size == 0:
        return
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


def _read_settings_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError("--run-dir", f"{path} is unreadable ({type(error).__name__}); nothing was changed") from None


def write_settings(run_dir: Path, settings: SearchSettings) -> None:
    """Record a new run's settings, or check that an existing run was started with these."""
    path = run_dir / SETTINGS_FILE
    wanted = settings.to_dict()
    if not path.exists():
        write_text(path, yaml.safe_dump(wanted, sort_keys=False))
        return
    existing = _read_settings_file(path)
    if not isinstance(existing, dict):
        raise InputError("--run-dir", f"{path} is not a run settings file; nothing was changed")
    with contextlib.suppress(InputError, TypeError):  # an unreadable one is reported as differing below
        # A file written before a field existed reads back with that field's old behaviour.
        existing = SearchSettings.from_dict(existing).to_dict()
    if existing != wanted:
        changed = sorted(key for key in wanted if existing.get(key) != wanted[key])
        raise InputError(
            "--run-dir",
            f"{run_dir} was started with other settings ({', '.join(changed)} differ); "
            "rerun with the original options or pick another folder",
        )


def require_run(run_dir: Path) -> None:
    """Raise naming ``--run-dir`` unless ``run_dir`` holds a run (its study and its settings)."""
    if not Path(run_dir).is_dir():
        raise InputError("--run-dir", f"{run_dir} is not a folder")
    if not (run_dir / STORAGE_FILE).is_file() or not (run_dir / SETTINGS_FILE).is_file():
        raise InputError("--run-dir", f"{run_dir} holds no mvit-nas run (no {STORAGE_FILE} and {SETTINGS_FILE})")


def load_settings(run_dir: str | Path) -> SearchSettings:
    """The settings a run was started with."""
    path = Path(run_dir) / SETTINGS_FILE
    data = _read_settings_file(path)
    try:
        return SearchSettings.from_dict(data)
    except (InputError, TypeError) as error:
        raise InputError("--run-dir", f"{path} is not an mvit-nas run settings file ({first_line(error)})") from None


# --- the study ---------------------------------------------------------------------------


def open_study(run_dir: Path, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The run's study, read-write (created empty, with its objectives named, if the run is new)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(run_dir)
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=url, sampler=sampler)
    except KeyError:
        study = optuna.create_study(study_name=STUDY_NAME, storage=url, sampler=sampler, directions=list(DIRECTIONS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
        return study


def judging_calibration(study: optuna.Study, calibration: Calibration, spec: LatencySpec) -> Calibration:
    """Add ``calibration`` (just timed under ``spec``) to the run's calibrations; the one the run judges by.

    That is the quietest of them (:func:`~mvit_nas.latency.quietest`): every judgement of
    the run, from its first trial to the front's final re-measurement, is against the
    quietest timing of the references it has seen, so a start, resume or final check on
    a busy machine moves no verdict.
    """
    history = [*study.user_attrs.get(CALIBRATIONS_ATTR, []), calibration.to_dict()]
    study.set_user_attr(CALIBRATIONS_ATTR, history)
    judge = quietest([Calibration.from_dict(c) for c in history], spec, calibration.hardware)
    assert judge is not None  # ``calibration`` itself qualifies
    return judge


def read_study(run_dir: Path) -> optuna.Study:
    """An in-memory snapshot of the run's study, read without writing: every report sees the same trials.

    A leftover rollback journal (a search killed mid-write) needs a writer to roll it
    back; SQLite does that on a normal open, and it only discards the unfinished write.
    """
    storage_file = (Path(run_dir) / STORAGE_FILE).resolve()
    hot_journal = storage_file.with_name(storage_file.name + "-journal").exists()
    quoted = urllib.parse.quote(str(storage_file))
    url = f"sqlite:///{storage_file}" if hot_journal else f"sqlite:///file:{quoted}?mode=ro&uri=true"
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=url)
        trials = study.get_trials(deepcopy=False)
    except KeyError:
        raise InputError("--run-dir", f"{storage_file} holds no study named {STUDY_NAME!r}") from None
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
        problem = str(getattr(error, "orig", None) or type(error).__name__)
        raise InputError("--run-dir", f"{storage_file} is corrupted or not an Optuna study ({problem})") from None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created in memory" is noise here
    try:
        snapshot = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    snapshot.add_trials(sorted(trials, key=lambda t: t.number))
    for key, value in study.user_attrs.items():  # the run's calibrations, the front's drops
        snapshot.set_user_attr(key, value)
    # Numbers are the contract (file names, duplicate_of); a snapshot that renumbered would be wrong.
    if [t.number for t in snapshot.get_trials(deepcopy=False)] != sorted(t.number for t in trials):
        raise RuntimeError(f"{storage_file}: trial numbers are not contiguous; cannot snapshot the study")
    return snapshot
