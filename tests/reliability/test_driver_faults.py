"""Driver faults (issue 5.2): SIGKILL of the driver at many moments, then the same command again;
Ctrl-C of ``mvit-nas search``: a clean stop with a resume hint, and a rerun completes.

After every kill the run must finish with exactly the requested number of finished
trials, no trial number repeated, and every trial that was COMPLETE before unchanged.
The kill moments are chosen at random (the seed is in every failure message; set
``RELIABILITY_SEED`` to replay one).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from reliability_helpers import (
    REPO,
    assert_run_complete,
    assert_unchanged,
    completed_count,
    driver_command,
    driver_env,
    run_driver,
    seed_run_dir,
    snapshot,
    tiny_search_args,
    trials_of,
)

from mvit_nas.faults import FAULT_ENV
from mvit_nas.run import INTERRUPTED, STORAGE_FILE

SEED = int(os.environ.get("RELIABILITY_SEED", random.SystemRandom().randrange(2**32)))


def _kill_when(run_dir: Path, trials: int, ready: Callable[[Path], bool], delay: float) -> None:
    """Start the driver, wait until ``ready(run_dir)``, then SIGKILL it ``delay`` seconds later."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(driver_command(run_dir, trials), cwd=REPO, env=driver_env(), **quiet)
    try:
        deadline = time.monotonic() + 300
        while not ready(run_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        assert process.poll() is None, f"the driver ended (rc {process.returncode}) before the kill (seed {SEED})"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_sigkill_of_the_driver_at_nine_moments_never_loses_or_repeats_a_trial(tmp_path: Path) -> None:
    """Nine kills on one run, each followed by the same command; the last one runs to the end.

    The run starts without the dataset cache, so the early kills hit imports and caching.
    """
    rng = random.Random(SEED)
    requested = 14
    run_dir = tmp_path / "run"
    done_before = [0]

    def after_more_completed(count: int) -> Callable[[Path], bool]:
        return lambda folder: completed_count(folder) >= done_before[0] + count

    moments: list[tuple[str, Any]] = [
        ("right after start", rng.uniform(0.0, 1.5)),
        ("dataset caching", "data:2"),  # the train split is cached, the val split generated, not yet cached
        ("sampling a trial's parameters", f"suggest:{rng.randint(1, 4)}"),
        ("requeuing an interrupted trial", "requeue:1"),
        ("between ask and submit", f"submit:{rng.randint(1, 2)}"),
        ("a storage transaction, before COMMIT", f"commit:{rng.randint(1, 30)}"),
        ("mid-trial, before the proxy trains", f"proxy:{rng.randint(1, 2)}"),
        ("right after a result was committed", f"told:{rng.randint(1, 2)}"),
        ("after more completed trials", rng.randint(2, 3)),  # with "told" >= 1: >= 3 completed to check
    ]
    seen: dict[int, Any] = {}
    for name, plan in moments:
        done_before[0] = completed_count(run_dir)
        context = f"kill {name} ({plan!r}, seed {SEED})"
        if isinstance(plan, float):
            _kill_when(run_dir, requested, lambda _folder: True, delay=plan)
        elif isinstance(plan, int):
            _kill_when(run_dir, requested, after_more_completed(plan), delay=rng.uniform(0.0, 0.5))
        else:
            assert run_driver(run_dir, requested, kill_at=plan) == -signal.SIGKILL, f"{context}: never reached"
        assert_unchanged(seen, run_dir)
        seen |= snapshot(run_dir)
        assert completed_count(run_dir) < requested, context

    assert run_driver(run_dir, requested) == 0
    trials = assert_run_complete(run_dir, requested)
    assert_unchanged(seen, run_dir)
    assert len(seen) >= 3, f"the kills hit too early to test completed trials (seed {SEED})"
    assert any(t.user_attrs.get("failure") == INTERRUPTED for t in trials), "no kill interrupted a trial"
    assert not [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("failure") != INTERRUPTED]


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-qq", "-o", os.devnull, "true"], capture_output=True)
    return probe.returncode == 0


def _strace_kill(path: Path, syscalls: str, when: int) -> list[str]:
    """A command prefix that SIGKILLs the driver at its ``when``-th ``syscalls`` call on ``path``."""
    return [
        *("strace", "-f", "-qq", "-o", os.devnull, "-P", str(path), "-e", f"trace={syscalls}"),
        *("-e", f"inject={syscalls}:signal=SIGKILL:when={when}"),
    ]


needs_strace = pytest.mark.skipif(not _strace_works(), reason="needs strace with ptrace permission")


@pytest.mark.slow
@needs_strace
def test_sigkill_inside_a_commit_leaves_a_hot_journal_and_the_resume_rolls_it_back(tmp_path: Path, data: Path) -> None:
    rng = random.Random(SEED)
    requested = 5
    run_dir = seed_run_dir(tmp_path / "run", data)
    journal = (run_dir / STORAGE_FILE).resolve().with_name(STORAGE_FILE + "-journal")
    # SQLite deletes the journal as the last step of every COMMIT, after the database pages were
    # written: a kill there is a kill in the middle of a storage write.
    kill = _strace_kill(journal, "unlink,unlinkat", when=rng.randint(20, 60))
    killed = subprocess.run(
        [*kill, *driver_command(run_dir, requested)], cwd=REPO, env=driver_env(), capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, f"not killed mid-COMMIT (seed {SEED})"
    assert journal.exists(), "no hot journal: the kill did not land inside a COMMIT"
    # What was committed before the kill, read from a copy (opening the real file would roll it back).
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            shutil.copy(path, copy / path.name)
    before = snapshot(copy)

    assert run_driver(run_dir, requested) == 0, "the resume after a kill mid-COMMIT failed"
    assert_run_complete(run_dir, requested)
    assert_unchanged(before, run_dir)
    assert not journal.exists()


@pytest.mark.slow
@needs_strace
def test_sigkill_while_the_study_file_is_created_then_the_resume_starts_the_run(tmp_path: Path, data: Path) -> None:
    run_dir = seed_run_dir(tmp_path / "run", data)
    study_file = (run_dir / STORAGE_FILE).resolve()
    # Killed as SQLite opens its first journal: study.db exists, nothing is committed yet.
    kill = _strace_kill(study_file.with_name(STORAGE_FILE + "-journal"), "open,openat", when=1)
    killed = subprocess.run(
        [*kill, *driver_command(run_dir, 2)], cwd=REPO, env=driver_env(), capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL
    assert study_file.exists() and study_file.stat().st_size == 0, "the kill did not land before the first COMMIT"

    assert run_driver(run_dir, 2) == 0, "a run killed while creating its study cannot be resumed"
    assert_run_complete(run_dir, 2)


# --- Ctrl-C of the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctrl_c_run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Any]:
    """``mvit-nas search`` (Ray, two workers) stopped by Ctrl-C mid-run, then the same command again."""
    folder = tmp_path_factory.mktemp("ctrl-c")
    run_dir = seed_run_dir(folder / "run", data)
    requested = 6
    command = [
        "mvit-nas",
        *tiny_search_args(folder / "tiny.yaml"),
        *("--trials", str(requested), "--epochs", "0.01", "--backend", "eager", "--threads", "1"),
        *("--workers", "2", "--run-dir", str(run_dir)),
    ]
    # Trials 2-5 hang (in this first run only), so the run cannot finish before the Ctrl-C lands:
    # tiny trials are fast enough that a quiet machine otherwise completes all six first.
    hanging = {**os.environ, FAULT_ENV: "2:sleep,3:sleep,4:sleep,5:sleep"}
    # Its own session, so that the SIGINT goes to the whole process group, as Ctrl-C in a terminal does.
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=hanging,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A shell runs background jobs with SIGINT ignored, and children inherit that; a terminal's
        # Ctrl-C reaches a driver whose SIGINT is at its default, so give the driver that default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while completed_count(run_dir) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the search ended before Ctrl-C"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)
    stopped = {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}
    stopped["trials"] = trials_of(run_dir)
    stopped["snapshot"] = snapshot(run_dir)
    rerun = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=400)
    return {"stopped": stopped, "rerun": rerun, "run_dir": run_dir, "requested": requested}


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_resume_hint_and_the_same_command_completes(ctrl_c_run: dict[str, Any]) -> None:
    stopped, rerun = ctrl_c_run["stopped"], ctrl_c_run["rerun"]
    assert stopped["returncode"] == 130, stopped["stderr"][-3000:]
    assert "rerun the same command to resume" in stopped["stderr"]
    assert "Traceback" not in stopped["stderr"]
    assert stopped["snapshot"], "Ctrl-C came before any trial completed"

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # Exactly the requested count, no number repeated, nothing left running, completed trials as they were.
    assert_run_complete(ctrl_c_run["run_dir"], ctrl_c_run["requested"], check_retries=False)
    assert_unchanged(stopped["snapshot"], ctrl_c_run["run_dir"])


@pytest.mark.slow
def test_trials_interrupted_by_ctrl_c_are_run_again_on_resume(ctrl_c_run: dict[str, Any]) -> None:
    assert ctrl_c_run["rerun"].returncode == 0
    trials = trials_of(ctrl_c_run["run_dir"])
    interrupted = [t for t in trials if t.user_attrs.get("failure") == INTERRUPTED]
    assert interrupted, "Ctrl-C interrupted no trial"
    assert_run_complete(ctrl_c_run["run_dir"], ctrl_c_run["requested"])
