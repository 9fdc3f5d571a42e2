"""Determinism (issue 5.6): the same seed samples the same configs and, on CPU, gets the same accuracies.

The sampler (TPE) draws its first ``n_startup_trials`` (10) trials at random from the seed
alone; later suggestions also depend on the measured latencies, which vary from run to
run, so the sequence is compared over the start-up trials.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from reliability_helpers import run_driver, seed_run_dir, tiny_settings, trials_of

from mvit_nas.search import search

STARTUP_TRIALS = 10


def _sampled(run_dir: Path, data: Path, seed: int) -> list[tuple[dict[str, object], dict[str, object]]]:
    # A budget of 1 microsecond: every trial is over budget, measured but never trained.
    settings = tiny_settings(budget_ms=1e-3, seed=seed)
    outcome = search(settings, seed_run_dir(run_dir, data), trials=STARTUP_TRIALS, executor="local", workers=1)
    trials = outcome.study.get_trials(deepcopy=False)
    assert all(t.user_attrs["feasible"] is False and t.user_attrs["accuracy"] is None for t in trials)
    return [(t.params, t.user_attrs["config"]) for t in trials]


@pytest.mark.slow
def test_the_same_seed_samples_the_same_configs_in_the_same_order(tmp_path: Path, data: Path) -> None:
    first = _sampled(tmp_path / "a", data, seed=7)
    second = _sampled(tmp_path / "b", data, seed=7)
    assert len(first) == STARTUP_TRIALS
    assert first == second
    other = _sampled(tmp_path / "c", data, seed=8)
    assert [params for params, _ in other] != [params for params, _ in first], "the seed changes nothing"


@pytest.mark.slow
def test_the_same_seed_gives_the_same_proxy_accuracies_on_cpu(tmp_path: Path, data: Path) -> None:
    # One run in this process, the other in a fresh one: nothing carried over but the seed.
    outcome = search(tiny_settings(), seed_run_dir(tmp_path / "a", data), trials=4, executor="local", workers=1)
    other_dir = seed_run_dir(tmp_path / "b", data)
    assert run_driver(other_dir, 4) == 0
    first = outcome.study.get_trials(deepcopy=False)
    second = trials_of(other_dir)
    assert all(t.state == TrialState.COMPLETE for t in [*first, *second])
    assert [t.user_attrs["config"] for t in first] == [t.user_attrs["config"] for t in second]
    accuracies = [t.user_attrs["accuracy"] for t in first]
    assert accuracies == [t.user_attrs["accuracy"] for t in second]
    assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in accuracies)
