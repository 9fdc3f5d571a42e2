"""Shared helpers of the reliability suite (issue 5): run folders, snapshots, driver subprocesses.

Not a test module (no ``test_`` prefix) and not a ``conftest.py`` (``tests/conftest.py``
is imported by name as ``conftest``; a second one here would shadow it).

The tiny search of ``tests/test_search.py`` (``TINY_SPACE``: 16 architectures at 64 px,
a trial takes about a second) is reused everywhere. Every new run folder would
generate the synthetic proxy dataset (about ten seconds); :func:`seed_run_dir`
hard-links one generated copy into a folder instead, so only the tests about dataset
caching pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import FAST_LATENCY, FAST_PROXY, TINY_SPACE, tiny_settings
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.data import load_dataset, parse_dataset_spec
from mvit_nas.run import INTERRUPTED, STORAGE_FILE, STUDY_NAME, is_finished, storage_url

REPO = Path(__file__).resolve().parents[2]
__all__ = ["FAST_LATENCY", "FAST_PROXY", "REPO", "TINY_SPACE", "tiny_settings"]

# A search driver in a subprocess: the Python API, local executor, tiny space.
# ``RELIABILITY_KILL_AT="point:n"`` SIGKILLs the driver the n-th time it reaches
# ``point`` (see install_kill_hook); without it the script is the plain search command.
DRIVER = """
import sys
sys.path.insert(0, "tests")
sys.path.insert(0, "tests/reliability")
import reliability_helpers
reliability_helpers.install_kill_hook()
reliability_helpers.log_rung_trainings()
from helpers import tiny_settings
from mvit_nas.fidelity import FidelitySpec
from mvit_nas.search import search
halving = {"fidelity": FidelitySpec("halving", eta=2, max_epochs=0.04)} if sys.argv[3:] == ["halving"] else {}
search(tiny_settings(**halving), sys.argv[1], trials=int(sys.argv[2]), executor="local", workers=1)
"""
KILL_ENV = "RELIABILITY_KILL_AT"
KILL_POINTS = ("data", "suggest", "requeue", "submit", "commit", "proxy", "told", "rung")
RUNG_LOG_ENV = "RELIABILITY_RUNG_LOG"  # a file that gets "<trial> <rung>" for every rung training started


def log_rung_trainings() -> None:
    """In a driver subprocess: append each successive-halving training it starts to the :data:`RUNG_LOG_ENV` file."""
    log = os.environ.get(RUNG_LOG_ENV)
    if not log:
        return
    evaluation = importlib.import_module("mvit_nas.evaluation")
    original = evaluation.train_rung

    def logged(number: int, cfg: Any, rung: int, *args: Any) -> Any:
        with open(log, "a") as handle:
            handle.write(f"{number} {rung}\n")
        return original(number, cfg, rung, *args)

    evaluation.train_rung = logged


def install_kill_hook() -> None:
    """In a driver subprocess: SIGKILL this process the n-th time it reaches a point.

    Points (``RELIABILITY_KILL_AT="point:n"``):

    - ``data``: the synthetic dataset has just been generated, before it is cached
      (the n-th split; n = 2 leaves the train split cached and the val split not);
    - ``suggest``: inside ``study.ask`` + sampling, after n-1 parameters were suggested;
    - ``requeue``: on resume, right after an interrupted trial was enqueued again and
      before it was marked failed;
    - ``submit``: a trial was asked and its config recorded, not yet evaluated;
    - ``commit``: in a storage transaction, after its statements ran and before COMMIT;
    - ``proxy``: mid-trial, latency measured, proxy training about to start;
    - ``told``: a trial's result has just been committed (the n-th finished trial);
    - ``rung``: a successive-halving rung's result has just been recorded (the n-th one).

    The kill is a real ``SIGKILL`` of the driver's own process: no handler, no cleanup.
    """
    plan = os.environ.get(KILL_ENV)
    if not plan:
        return
    point, _, count = plan.partition(":")
    target = int(count)
    seen = [0]

    def reached() -> None:
        seen[0] += 1
        if seen[0] == target:
            os.kill(os.getpid(), 9)

    def after(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            reached()
            return result

        setattr(owner, name, wrapper)

    def before(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            reached()
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    import mvit_nas.data.synthetic

    search_module = importlib.import_module("mvit_nas.search")  # the attribute mvit_nas.search is the function

    if point == "data":
        after(mvit_nas.data.synthetic, "generate_synthetic")
    elif point == "suggest":
        before(optuna.trial.Trial, "suggest_categorical")
    elif point == "requeue":
        after(optuna.study.Study, "enqueue_trial")
    elif point == "submit":
        before(search_module._Driver, "_submit")
    elif point == "proxy":
        before(importlib.import_module("mvit_nas.evaluation"), "evaluate_proxy")
    elif point == "told":
        after(search_module._Driver, "_count")
    elif point == "rung":
        after(search_module._Driver, "_record_rung")
    elif point == "commit":
        import sqlalchemy

        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", lambda _connection: reached())
    else:
        raise ValueError(f"unknown kill point {point!r}; use one of {KILL_POINTS}")


def driver_command(run_dir: Path, trials: int, halving: bool = False) -> list[str]:
    return [sys.executable, "-c", DRIVER, str(run_dir), str(trials), *(["halving"] if halving else [])]


def driver_env(kill_at: str | None = None, faults: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, "MVIT_NAS_TEST_FAULTS")}
    if kill_at:
        env[KILL_ENV] = kill_at
    if faults:
        env["MVIT_NAS_TEST_FAULTS"] = faults
    return env


def run_driver(
    run_dir: Path,
    trials: int,
    kill_at: str | None = None,
    timeout: float = 300,
    *,
    halving: bool = False,
    rung_log: Path | None = None,
) -> int:
    """Run the driver to its end (or its planned kill); its return code (``-9`` when killed).

    ``halving``: with successive halving (eta 2, rungs of 0.01, 0.02 and 0.04 epochs); ``rung_log``:
    the file each rung training started is appended to.
    """
    env = driver_env(kill_at)
    if rung_log is not None:
        env[RUNG_LOG_ENV] = str(rung_log)
    result = subprocess.run(
        driver_command(run_dir, trials, halving),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode not in (0, -9):
        raise AssertionError(f"driver failed ({result.returncode}): {result.stderr[-3000:]}")
    return result.returncode


# --- run folders ----------------------------------------------------------------------


_DATA: dict[str, Path] = {}


def shared_data(factory: pytest.TempPathFactory) -> Path:
    """A folder holding the cached synthetic dataset at 64 px, generated once per session."""
    if "data" not in _DATA:
        folder = factory.mktemp("shared-data")
        load_dataset(parse_dataset_spec(tiny_settings().dataset), FAST_PROXY.resolution, cache_dir=folder)
        _DATA["data"] = folder
    return _DATA["data"]


def seed_run_dir(run_dir: Path, data: Path) -> Path:
    """Create ``run_dir`` with the shared dataset cache hard-linked into ``run_dir/data``."""
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    for path in data.iterdir():
        if path.is_file() and not path.name.startswith("."):
            os.link(path, run_dir / "data" / path.name)
    return run_dir


def write_space(path: Path) -> Path:
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


def tiny_search_args(space_file: Path) -> list[str]:
    """``search`` on the tiny space, every config within budget, the 256 px seeds trained at 64 px."""
    return ["search", "--budget-ms", "1000", "--proxy-scale", "0.25", "--space", str(write_space(space_file))]


def trials_of(run_dir: Path) -> list[FrozenTrial]:
    """The run's trials; ``[]`` while it has no study yet (never creates one, unlike ``open_study``)."""
    path = run_dir / STORAGE_FILE
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            names = {name for (name,) in connection.execute("SELECT study_name FROM studies")}
        if STUDY_NAME not in names:
            return []
    except sqlite3.Error:
        pass  # e.g. a hot journal, which only a read-write open rolls back: let Optuna open it
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))
    return study.get_trials(deepcopy=False)


def completed_count(run_dir: Path) -> int:
    """COMPLETE trials, read straight from SQLite (safe while a driver is writing)."""
    path = run_dir / STORAGE_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def snapshot(run_dir: Path) -> dict[int, tuple[Any, ...]]:
    """Every COMPLETE trial: number -> everything that must never change."""
    return {
        t.number: (t.params, t.values, t.user_attrs, t.system_attrs, t.datetime_complete)
        for t in trials_of(run_dir)
        if t.state == TrialState.COMPLETE
    }


def assert_unchanged(before: dict[int, tuple[Any, ...]], run_dir: Path) -> None:
    after = snapshot(run_dir)
    for number, record in before.items():
        assert number in after, f"completed trial {number} is no longer complete"
        assert after[number] == record, f"completed trial {number} changed"


def assert_run_complete(run_dir: Path, requested: int, *, check_retries: bool = True) -> list[FrozenTrial]:
    """The run holds exactly ``requested`` finished trials, and nothing was counted twice.

    With ``check_retries``, every trial failed as interrupted was queued again exactly once,
    with the parameters it had been given.
    """
    trials = trials_of(run_dir)
    assert [t.number for t in trials] == list(range(len(trials))), "trial numbers repeat or skip"
    assert sum(is_finished(t) for t in trials) == requested
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials), "a trial left running or queued"
    evaluated = [
        t.user_attrs["config_key"]
        for t in trials
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]
    assert len(evaluated) == len(set(evaluated)), "a configuration was recorded as evaluated twice"
    for trial in trials if check_retries else []:
        if trial.user_attrs.get("failure") == INTERRUPTED:
            retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
            assert len(retries) == 1, f"interrupted trial {trial.number} was queued {len(retries)} times"
            # A retry can itself be interrupted (even before it took its parameters): follow the chain
            # to the run that finished, which must have had every parameter the first one had.
            final = retries[0]
            while final.user_attrs.get("failure") == INTERRUPTED:
                final = next(t for t in trials if t.user_attrs.get("retry_of") == final.number)
            assert trial.params.items() <= final.params.items(), f"trial {final.number} lost {trial.number}'s params"
    return trials


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def real_study(factory: pytest.TempPathFactory, data: Path) -> Path:
    """A finished 3-trial tiny run (made once per session; copy it, never write to it)."""
    if "study" not in _DATA:
        from mvit_nas.search import search

        run_dir = seed_run_dir(factory.mktemp("real-study") / "run", data)
        search(tiny_settings(), run_dir, trials=3, executor="local", workers=1)
        _DATA["study"] = run_dir
    return _DATA["study"]
