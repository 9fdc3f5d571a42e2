"""Trial faults (issue 5.1): a trial that raises, diverges, runs out of memory, hangs or loses its
worker is recorded as failed with its reason, and the search goes on to the requested count.

Faults are injected for real through the test-only hook ``MVIT_NAS_TEST_FAULTS``
(``mvit_nas.faults.inject_fault``); ``MVIT_NAS_TEST_FAULT_LOG`` makes the hook log each
fault it fires, so the tests know how often, and in which process, a trial was attempted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from reliability_helpers import seed_run_dir, tiny_settings

from mvit_nas import InputError
from mvit_nas.faults import FAULT_ENV, FAULT_LOG_ENV
from mvit_nas.run import STORAGE_FILE, is_finished
from mvit_nas.search import search


def _fault_log(path: Path) -> list[tuple[int, str, int]]:
    """(trial, fault, pid) for every fault the hook fired."""
    if not path.exists():
        return []
    return [(int(t), fault, int(pid)) for t, fault, pid in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.slow
def test_raise_nan_and_oom_fail_their_trial_with_a_reason_and_the_search_goes_on(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "faults.log"
    monkeypatch.setenv(FAULT_ENV, "0:raise,1:nan,2:oom")
    monkeypatch.setenv(FAULT_LOG_ENV, str(log))
    run_dir = seed_run_dir(tmp_path / "run", data)
    outcome = search(tiny_settings(), run_dir, trials=5, executor="local", workers=1)

    assert [(t, f) for t, f, _ in _fault_log(log)] == [(0, "raise"), (1, "nan"), (2, "oom")]
    trials = {t.number: t for t in outcome.study.get_trials(deepcopy=False)}
    reasons = {number: trials[number].user_attrs.get("failure") for number in (0, 1, 2)}
    assert all(trials[number].state == TrialState.FAIL for number in (0, 1, 2)), reasons
    assert reasons[0] == "error: RuntimeError: injected fault in trial 0"
    assert reasons[1].startswith("diverged"), reasons[1]  # a real NaN/inf loss at lr 1e12
    assert "can't allocate memory" in reasons[2] or "out of memory" in reasons[2], reasons[2]  # a real 4 TiB request
    assert all(len(reason) <= 500 and "\n" not in reason for reason in reasons.values())

    # The search went on: the requested count, every later trial evaluated.
    assert sum(is_finished(t) for t in trials.values()) == 5
    later = [t for number, t in trials.items() if number > 2]
    assert later and all(t.state == TrialState.COMPLETE for t in later)
    # A failed trial is never a front point, and its config is not taken as evaluated.
    assert outcome.front and all(t.state == TrialState.COMPLETE for t in outcome.front)
    failed_keys = {trials[number].user_attrs["config_key"] for number in (0, 1, 2)}
    assert not any(t.user_attrs.get("duplicate_of") in (0, 1, 2) for t in trials.values())
    for trial in later:  # a repeat of a failed config is evaluated afresh, not copied from the failure
        if trial.user_attrs["config_key"] in failed_keys:
            assert "duplicate_of" not in trial.user_attrs


@pytest.mark.slow
def test_ray_worker_sigkill_is_retried_once_then_failed_and_a_hung_trial_times_out(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "faults.log"
    # Trial 1: the worker SIGKILLs itself (and again on the retry). Trial 2: sleeps an hour.
    monkeypatch.setenv(FAULT_ENV, "1:kill,2:sleep")
    monkeypatch.setenv(FAULT_LOG_ENV, str(log))
    run_dir = seed_run_dir(tmp_path / "run", data)
    # The timeout counts from submission, so it must cover trial 1's two attempts, each with a fresh
    # worker's start (seconds on a quiet machine; a run of 40 s was too short under a parallel suite).
    outcome = search(tiny_settings(), run_dir, trials=5, executor="ray", workers=2, trial_timeout=75)

    fired = _fault_log(log)
    kills = [pid for trial, fault, pid in fired if (trial, fault) == (1, "kill")]
    assert len(kills) == 2, f"trial 1 ran {len(kills)} times; expected the original and exactly one retry"
    assert len(set(kills)) == 2, "the retry ran in the process that had been killed"
    assert [(t, f) for t, f, _ in fired if t != 1] == [(2, "sleep")]

    trials = {t.number: t for t in outcome.study.get_trials(deepcopy=False)}
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["failure"].startswith("worker died"), trials[1].user_attrs["failure"]
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs["failure"] == "timeout: ran longer than 75 s"
    assert sum(is_finished(t) for t in trials.values()) == 5
    assert any(t.state == TrialState.COMPLETE for number, t in trials.items() if number > 2), "the search stopped"


def test_local_executor_refuses_a_trial_timeout_before_any_work(tmp_path: Path, data: Path) -> None:
    # In-process trials cannot be stopped, so the combination is refused up front (RunOptions):
    # a trial that would hang is never started and the run folder gets no study.
    run_dir = seed_run_dir(tmp_path / "run", data)
    with pytest.raises(InputError) as caught:
        search(tiny_settings(), run_dir, trials=2, executor="local", workers=1, trial_timeout=1.0)
    assert caught.value.field == "--trial-timeout"
    assert not (run_dir / STORAGE_FILE).exists()
