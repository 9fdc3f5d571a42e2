"""Successive halving survives a SIGKILL of the driver (issue 14): no rung result lost, none trained twice,
promotions continue after the resume."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from reliability_helpers import assert_run_complete, run_driver, seed_run_dir

from mvit_nas.fidelity import promotions, read_rungs
from mvit_nas.report import rung_entries
from mvit_nas.run import STUDY_NAME, storage_url

TRIALS = 10
ETA, TOP_RUNG = 2, 2  # the driver's halving: eta 2, rungs 0.01, 0.02, 0.04 epochs


def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))


# Between rungs: right after the first and the third rung result was recorded, and after the 7th trial was told.
@pytest.mark.parametrize("kill_at", ["rung:1", "rung:3", "told:7"])
def test_sigkill_between_rungs_then_a_resume_recomputes_nothing(tmp_path: Path, data: Path, kill_at: str) -> None:
    run_dir = seed_run_dir(tmp_path / "run", data)
    started_log = tmp_path / "rungs.log"
    assert run_driver(run_dir, TRIALS, kill_at=kill_at, halving=True, rung_log=started_log) == -9
    recorded = read_rungs(_study(run_dir).user_attrs)
    assert recorded, "killed before any rung result: the kill point tests nothing"

    assert run_driver(run_dir, TRIALS, halving=True, rung_log=started_log) == 0
    study = _study(run_dir)
    results = read_rungs(study.user_attrs)
    started = [tuple(map(int, line.split())) for line in started_log.read_text().splitlines()]
    assert len(started) == len(set(started)), f"a rung was trained twice: {started}"
    assert set(started) == set(results), "a rung training started but its result is missing"
    assert {key: results[key] for key in recorded} == recorded, "a recorded rung result changed"
    assert len(results) > len(recorded), "the resume promoted nothing"
    failed = [key for key, result in results.items() if result.score is None]
    assert promotions(rung_entries(study), ETA, TOP_RUNG, failed) == [], "promotions stopped before the end"
    assert_run_complete(run_dir, TRIALS)
