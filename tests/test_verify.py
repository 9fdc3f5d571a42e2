"""The verification stage: the front and the fitted seeds trained longer, recorded per job, resumable, reported.

One tiny search (``TINY_SPACE``, 64 px, 0.01 proxy epochs) with one budget-fitted seed
is run once per module; each test verifies a copy of it at 10x the proxy's epochs
(0.1 epoch: about a second per job), in-process (``executor="local"``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_settings

import mvit_nas.verify as verify_module
from mvit_nas import InputError, build_model
from mvit_nas.cli import main
from mvit_nas.pipeline import run_search
from mvit_nas.report import export_run, front
from mvit_nas.report.verification import (
    BEATS,
    NO_DIFFERENCE,
    kendall,
    noise_threshold,
    non_dominated,
    pooled_sd,
    read_records,
    seed_spread,
    verdict,
)
from mvit_nas.run import DATA_DIR, VERIFY_FILE, TrialRecord, config_key, open_study, read_study, weights_path
from mvit_nas.search import search
from mvit_nas.settings import RunOptions
from mvit_nas.verify import plan_models, verify_run

REPO = Path(__file__).resolve().parents[1]
TRIALS = 5
SEED_TAG = "xxs@64"  # how mvit_nas.seeds names a budget-fitted seed
EPOCHS = 0.1  # the default: 10x the tiny run's 0.01 proxy epochs
LOCAL = {"executor": "local", "workers": 1}


def _enqueue_fitted_seed(run_dir: Path) -> None:
    """Queue a config the run has not evaluated, tagged as a fitted seed (as the search enqueues them)."""
    study = open_study(run_dir)
    space = tiny_settings().search_space()
    seen = {TrialRecord.of(t).config_key for t in study.get_trials(deepcopy=False)}
    knobs = space.searched_knobs
    for values in itertools.product(*knobs.values()):
        params = dict(zip(knobs, values, strict=True))
        if config_key(space.decode(params, num_classes=10)) not in seen:
            study.enqueue_trial(params, user_attrs=TrialRecord(seed=SEED_TAG).user_attrs())
            return
    raise AssertionError("the tiny space is exhausted")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny search whose last trial is a budget-fitted seed."""
    run_dir = tmp_path_factory.mktemp("verify") / "run"
    search(tiny_settings(), run_dir, trials=TRIALS - 1, **LOCAL)
    _enqueue_fitted_seed(run_dir)
    search(tiny_settings(), run_dir, trials=TRIALS, **LOCAL)
    return run_dir


@pytest.fixture
def run(searched: Path, tmp_path: Path) -> Path:
    """A private copy of the searched run; the dataset cache is hard-linked (read only), the rest copied."""
    copy = tmp_path / "run"
    shutil.copytree(searched, copy, ignore=shutil.ignore_patterns(DATA_DIR, ".*"))
    shutil.copytree(searched / DATA_DIR, copy / DATA_DIR, copy_function=os.link)
    return copy


def _records_lines(run_dir: Path) -> list[str]:
    """Each record's JSON text as written (one per line; the list's separating commas left out)."""
    return [line.rstrip(",") for line in (run_dir / VERIFY_FILE).read_text().splitlines()[1:-1]]


# --- the noise rule and the statistics (pure) ---------------------------------------------


def test_the_noise_rule_on_crafted_numbers() -> None:
    # Two seeds per model, every model's seeds 0.02 apart: s = 0.02 / sqrt(2); the band for a
    # difference of two 2-seed means is 2 * s * sqrt(1/2 + 1/2) = 0.0283.
    groups = [[0.50, 0.52], [0.60, 0.62], [0.70, 0.68]]
    sd = pooled_sd(groups)
    assert sd == pytest.approx(0.02 / 2**0.5)
    band = noise_threshold(sd, 2, 2)
    assert band == pytest.approx(0.0283, abs=1e-4)
    assert seed_spread(groups) == pytest.approx((0.02, 0.02))
    assert verdict(0.03, band, latency_saved_ms=0.0) == BEATS  # just past the band, as fast
    assert verdict(0.025, band, latency_saved_ms=1.0) == NO_DIFFERENCE  # inside the band: noise
    assert verdict(-0.025, band, latency_saved_ms=1.0) == NO_DIFFERENCE
    assert verdict(-0.03, band, latency_saved_ms=1.0) == "less accurate"
    assert verdict(0.05, band, latency_saved_ms=-0.1) == "more accurate but slower"  # no dominance
    assert verdict(0.05, None, latency_saved_ms=1.0).startswith("undecided")  # no seed pair anywhere
    # Three seeds for one model: its larger spread widens everyone's band; more seeds narrow a mean's.
    wider = pooled_sd([[0.50, 0.52], [0.60, 0.66, 0.63]])
    assert wider is not None and wider > sd
    assert noise_threshold(wider, 3, 3) < noise_threshold(wider, 2, 2)
    assert pooled_sd([[0.5], [0.6]]) is None and seed_spread([[0.5]]) == (None, None)


def test_kendall_tau_and_the_verified_front() -> None:
    assert kendall([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])[0] == pytest.approx(1.0)
    assert kendall([0.1, 0.2, 0.3], [0.7, 0.6, 0.5])[0] == pytest.approx(-1.0)
    assert kendall([0.1], [0.5]) == (None, None)
    assert kendall([0.1, 0.1], [0.5, 0.6]) == (None, None)  # all tied: no ranking to agree with
    points = {1: (0.5, 1.0), 2: (0.6, 2.0), 3: (0.55, 2.5), 4: (0.6, 3.0)}
    assert non_dominated(points) == [1, 2]


# --- the stage ----------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_trains_the_front_and_the_fitted_seeds_with_every_seed(run: Path) -> None:
    study = read_study(run)
    models = plan_models(study)
    front_numbers = [t.number for t in front(study)]
    tagged = [t.number for t in study.get_trials() if TrialRecord.of(t).seed == SEED_TAG]
    assert set(models) == set(front_numbers) | set(tagged) and tagged

    report = verify_run(run, seeds=2, **LOCAL)

    records = read_records(run)
    assert sorted((r.trial, r.seed) for r in records) == sorted(itertools.product(models, (0, 1)))
    for record in records:
        assert record.epochs == EPOCHS and record.failure is None and record.hardware.startswith("cpu")
        assert 0.0 <= record.accuracy <= 1.0 and record.seconds > 0
        assert record.proxy_score == models[record.trial].values[0]
    for number, trial in models.items():  # training seed 0's weights, loadable into the trial's model
        state = torch.load(weights_path(run, number, verified=True), weights_only=True)
        build_model(TrialRecord.of(trial).config).load_state_dict(state, strict=True)
    assert len(list((run / "weights").glob("*.verified.pt"))) == len(models)

    assert {m.trial for m in report.models} == set(models)
    assert {m.role for m in report.models if m.trial in tagged} == {SEED_TAG}
    assert all(len(m.accuracies) == 2 for m in report.models)
    assert report.epochs == EPOCHS and report.seeds == 2 and report.spread_mean is not None
    assert report.spread_max >= report.spread_mean and report.seed_sd is not None
    assert report.kendall_tau is None or -1.0 <= report.kendall_tau <= 1.0
    assert len(report.comparisons) == len(front_numbers) * len(tagged)
    assert {c.seed for c in report.comparisons} == {SEED_TAG}
    assert set(report.verified_front) <= set(models) and report.verified_front
    assert (run / "verify.png").read_bytes()[:4] == b"\x89PNG"

    export_run(run)  # summary.md carries the verification
    summary = (run / "summary.md").read_text()
    assert "## Verification: longer training" in summary and "Kendall tau" in summary and SEED_TAG in summary


@pytest.mark.slow
def test_top_k_verifies_the_best_front_points_by_proxy_accuracy(run: Path) -> None:
    study = read_study(run)
    best = max(front(study), key=lambda t: t.values[0]).number
    report = verify_run(run, EPOCHS, top=1, seeds=2, **LOCAL)
    seeds = {t.number for t in study.get_trials() if TrialRecord.of(t).seed == SEED_TAG}
    assert {m.trial for m in report.models} == {best} | seeds
    assert len(read_records(run)) == 2 * len({best} | seeds)


KILLED_DRIVER = """
import os, sys
import mvit_nas.verify as verify
save = verify._save_job
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), 9)  # SIGKILL right after the first job is recorded: no cleanup
verify._save_job = save_then_die
verify.verify_run(sys.argv[1], float(sys.argv[2]), seeds=2, executor="local", workers=1)
"""


@pytest.mark.slow
def test_verify_resumes_after_sigkill_without_retraining_a_recorded_job(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = [sys.executable, "-c", KILLED_DRIVER, str(run), str(EPOCHS)]
    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = _records_lines(run)
    assert len(first) == 1

    trained: list[tuple[int, int]] = []
    job = verify_module.train_job

    def counting(number: int, *args: object) -> object:
        trained.append((number, args[1]))  # type: ignore[arg-type]
        return job(number, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "train_job", counting)
    report = verify_run(run, EPOCHS, seeds=2, **LOCAL)
    models = len(report.models)
    lines = _records_lines(run)
    assert lines[0] == first[0], "a recorded job was rewritten"
    assert len(lines) == models * 2 and len(trained) == models * 2 - 1
    recorded = json.loads(first[0])
    assert (recorded["trial"], recorded["seed"]) not in trained

    before = (run / VERIFY_FILE).read_bytes()
    verify_run(run, EPOCHS, seeds=2, **LOCAL)  # all done: nothing trains, nothing changes
    assert len(trained) == models * 2 - 1 and (run / VERIFY_FILE).read_bytes() == before


@pytest.mark.slow
def test_results_of_another_epoch_count_are_refused(run: Path) -> None:
    verify_run(run, EPOCHS, top=1, seeds=2, **LOCAL)
    before = (run / VERIFY_FILE).read_bytes()
    with pytest.raises(InputError) as refused:
        verify_run(run, 0.2, top=1, seeds=2, **LOCAL)
    assert refused.value.field == "--epochs" and "0.1" in str(refused.value)
    assert (run / VERIFY_FILE).read_bytes() == before


@pytest.mark.slow
def test_search_with_verify_epochs_verifies_before_the_export(run: Path) -> None:
    options = RunOptions(trials=TRIALS, verify_epochs=EPOCHS, **LOCAL)
    result = run_search(tiny_settings(), run, options)
    assert result.verification is not None and result.verification.epochs == EPOCHS
    assert len(read_records(run)) == 2 * len(result.verification.models)
    assert "## Verification: longer training" in (run / "summary.md").read_text()


@pytest.mark.parametrize("make", [False, True])
def test_cli_verify_on_a_folder_without_a_run_exits_2_naming_run_dir(
    tmp_path: Path, make: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "nothing"
    if make:
        folder.mkdir()
    assert main(["verify", "--run-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--run-dir" in err
    assert not (folder / VERIFY_FILE).exists()
