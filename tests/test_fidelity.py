"""Successive halving (issue 14): the schedule, the promotion rule on crafted scores, the rung-aware front,
and a real tiny search with ``--fidelity halving`` and ``single``."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers import FAST_PROXY, tiny_settings
from optuna.trial import TrialState

from mvit_nas.cli import main
from mvit_nas.fidelity import FidelitySpec, RungEntry, RungResult, promotions, ranked, read_rungs, rung_front
from mvit_nas.report import export_run, front, rung_entries, seed_dominance
from mvit_nas.report.tables import accuracy_scale
from mvit_nas.run import STUDY_NAME, is_feasible, read_study, storage_url, weights_path
from mvit_nas.search import search
from mvit_nas.settings import SearchSettings
from mvit_nas.validate import InputError

HALVING = FidelitySpec("halving", eta=2, max_epochs=0.04)  # the tiny proxy's 0.01 epochs: rungs 0.01, 0.02, 0.04


def _entries(rows: list[tuple[int, float, dict[int, float]]]) -> list[RungEntry]:
    return [RungEntry(trial, latency, scores) for trial, latency, scores in rows]


# --- the schedule ------------------------------------------------------------------------


def test_the_rungs_multiply_by_eta_and_end_at_the_verification_budget() -> None:
    assert FidelitySpec().schedule(0.25) == (0.25,)  # single: the proxy alone
    assert FidelitySpec("halving").schedule(0.25) == (0.25, 0.75, 2.5)  # 2.25 then 6.75 > 2.5: the top is 2.5
    assert FidelitySpec("halving", eta=3, max_epochs=2.25).schedule(0.25) == (0.25, 0.75, 2.25)
    assert FidelitySpec("halving", eta=2, max_epochs=1.0).schedule(0.25) == (0.25, 0.5, 1.0)
    assert FidelitySpec("halving", max_epochs=0.1).schedule(0.25) == (0.25,)  # nothing longer to give
    assert tiny_settings(fidelity=HALVING).rung_epochs() == (0.01, 0.02, 0.04)


@pytest.mark.parametrize(
    ("fields", "flag"),
    [({"kind": "hyper"}, "--fidelity"), ({"eta": 1}, "--eta"), ({"max_epochs": 0}, "--max-budget-epochs")],
)
def test_bad_fidelity_settings_name_their_flag(fields: dict[str, object], flag: str) -> None:
    with pytest.raises(InputError) as caught:
        FidelitySpec(**fields)  # type: ignore[arg-type]
    assert caught.value.field == flag


def test_settings_written_before_fidelity_existed_read_back_as_single() -> None:
    data = SearchSettings(budget_ms=5.0).to_dict()
    del data["fidelity"]
    assert SearchSettings.from_dict(data).fidelity == FidelitySpec()


# --- the promotion rule ----------------------------------------------------------------------


def test_the_best_third_of_a_rung_by_non_dominated_sorting_is_promoted() -> None:
    # Nine architectures at rung 0. The first Pareto layer (score up, latency down) is 0, 1, 4, 8;
    # its ends (the fastest, 0, and the most accurate, 8) have infinite crowding distance and come first.
    rows = [(0, 1.0, 0.30), (1, 1.5, 0.40), (2, 2.0, 0.35), (3, 2.5, 0.38), (4, 3.0, 0.50),
            (5, 3.5, 0.45), (6, 4.0, 0.20), (7, 4.5, 0.49), (8, 4.9, 0.60)]  # fmt: skip
    entries = _entries([(n, latency, {0: score}) for n, latency, score in rows])
    assert ranked(entries, 0)[:4] == [8, 0, 4, 1]
    assert promotions(entries, eta=3, top_rung=2) == [(8, 1), (0, 1), (4, 1)]  # floor(9/3) = 3
    assert promotions(entries, eta=2, top_rung=2) == [(8, 1), (0, 1), (4, 1), (1, 1)]  # floor(9/2) = 4
    assert promotions(entries[:2], eta=3, top_rung=2) == []  # a rung of 2 promotes nobody at eta 3
    assert promotions(entries, eta=3, top_rung=0) == []  # a single rung: nothing to promote to


def test_running_or_failed_promotions_are_not_due_and_higher_rungs_go_first() -> None:
    rows = [(0, 1.0, {0: 0.3, 1: 0.40}), (1, 2.0, {0: 0.5, 1: 0.55}), (2, 3.0, {0: 0.6, 1: 0.62}),
            (3, 4.0, {0: 0.2}), (4, 4.5, {0: 0.1}), (5, 5.0, {0: 0.25})]  # fmt: skip
    entries = _entries(rows)
    # rung 1 holds 3 results: its best one (trial 2, the most accurate end) is due at rung 2, before rung 0's.
    # rung 0 holds 6: the best 2 (2 and 0, its ends) already reached rung 1, so none is due there.
    assert promotions(entries, eta=3, top_rung=2) == [(2, 2)]
    assert promotions(entries, eta=3, top_rung=2, taken=[(2, 2)]) == []  # running now (or failed): not due again
    # Three more at rung 0 (nine: its best three go on): 6 and 7, the new fastest, are due. Trial 0 has left
    # the first layer (7 is faster and better) but keeps its rung 1 result: ASHA never takes a promotion back.
    more = [*entries, *_entries([(6, 0.5, {0: 0.05}), (7, 0.9, {0: 0.35}), (8, 1.2, {0: 0.45})])]
    assert promotions(more, eta=3, top_rung=2) == [(2, 2), (6, 1), (7, 1)]


def test_the_front_compares_two_architectures_only_at_a_rung_both_reached() -> None:
    entries = _entries(
        [
            (0, 2.0, {0: 0.40, 1: 0.70}),  # promoted: 0.70 after the longer rung
            (1, 3.0, {0: 0.45}),  # slower, and better than 0 at rung 0: on the front (0's 0.70 is another budget)
            (2, 3.5, {0: 0.42}),  # slower than 1 and worse at rung 0: dominated
            (3, 4.0, {0: 0.50, 1: 0.65}),  # worse than 0 at rung 1 (their common rung) and slower: dominated
        ]
    )
    assert rung_front(entries) == [0, 1]


# --- a real search -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def halving_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("halving")
    search(tiny_settings(fidelity=HALVING), run_dir, trials=10, executor="local", workers=1)
    return run_dir


def test_a_halving_search_promotes_by_the_rule_until_nothing_is_due(halving_run: Path) -> None:
    study = read_study(halving_run)
    results = read_rungs(study.user_attrs)
    assert results, "nothing was promoted"
    entries = rung_entries(study)
    for rung in (0, 1):
        # Asynchronous: a promotion is never taken back, so the promoted hold at least the rung's final best 1/eta.
        best = ranked(entries, rung)
        promoted = {trial for trial, r in results if r == rung + 1}
        assert set(best[: len(best) // HALVING.eta]) <= promoted, f"rung {rung}"
        assert promoted <= set(best), f"rung {rung}: promoted without a result at the rung below"
    for (trial, rung), result in results.items():
        assert result.epochs == HALVING.schedule(0.01)[rung] and result.score is not None
        assert weights_path(halving_run, trial, rung=rung).is_file()
    assert promotions(entries, HALVING.eta, top_rung=2) == []


def test_a_halving_front_shows_each_point_at_its_highest_rung(halving_run: Path) -> None:
    study = read_study(halving_run)
    entries = {e.trial: e for e in rung_entries(study)}
    points = front(study)
    assert [t.number for t in points] == rung_front(entries.values())
    assert any(t.user_attrs["rung"] > 0 for t in points)
    for trial in points:
        entry = entries[trial.number]
        assert trial.user_attrs["rung"] == entry.top and trial.values[0] == entry.scores[entry.top]


def test_a_halving_run_records_every_rung_in_trials_csv_and_summary(halving_run: Path, tmp_path: Path) -> None:
    export_run(halving_run, out_dir=tmp_path, formats=("yaml",))
    table = pd.read_csv(tmp_path / "trials.csv")
    results = read_rungs(read_study(halving_run).user_attrs)
    for (trial, rung), result in results.items():
        row = table.set_index("number").loc[trial]
        assert math.isclose(row[f"rung{rung}_accuracy"], result.score) and row[f"rung{rung}_epochs"] == result.epochs
        assert row["rung"] >= rung
    summary = (tmp_path / "summary.md").read_text()
    assert "## Successive halving" in summary and "share of training" in summary


def test_fidelity_single_runs_as_before(tmp_path: Path) -> None:
    before = search(tiny_settings(), tmp_path / "default", trials=4, executor="local", workers=1).study
    single = tiny_settings(fidelity=FidelitySpec("single", eta=5, max_epochs=9.0))
    after = search(single, tmp_path / "single", trials=4, executor="local", workers=1).study
    assert [t.params for t in after.trials] == [t.params for t in before.trials]
    assert [t.values[0] for t in after.trials] == [t.values[0] for t in before.trials]
    assert not read_rungs(after.user_attrs)
    export_run(tmp_path / "single", out_dir=tmp_path / "out", formats=("yaml",))
    assert "rung" not in pd.read_csv(tmp_path / "out" / "trials.csv").columns


def test_the_cli_refuses_a_bad_eta_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", "--budget-ms", "5", "--fidelity", "halving", "--eta", "1", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--eta" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def naswot_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("naswot")
    settings = tiny_settings(fidelity=HALVING, proxy=dataclasses.replace(FAST_PROXY, kind="naswot"))
    search(settings, run_dir, trials=10, executor="local", workers=1)
    return run_dir


def _front_part(summary: str) -> str:
    return summary[summary.index("## Pareto front") : summary.index("## Front against the seeds")]


def test_a_zero_cost_rung_0_labels_each_score_by_the_rung_it_is_from(naswot_run: Path, tmp_path: Path) -> None:
    settings = tiny_settings(fidelity=HALVING, proxy=dataclasses.replace(FAST_PROXY, kind="naswot"))
    assert accuracy_scale(settings, 0) == (1.0, "naswot score") and accuracy_scale(settings, 1) == (100.0, "%")
    study = read_study(naswot_run)
    assert read_rungs(study.user_attrs), "nothing was promoted"
    export_run(naswot_run, out_dir=tmp_path / "out", formats=("yaml",))
    summary = (tmp_path / "out" / "summary.md").read_text()
    front_part = _front_part(summary)
    points = front(study)
    rungs = {t.user_attrs.get("rung", 0) for t in points}
    mixed_units = 0 in rungs and len(rungs) > 1  # trained rungs (1 and 2, say) share one unit, the header's
    # A trained rung's score is a top-1 fraction, shown in percent; rung 0's is naswot's, shown as it is.
    for trial in points:
        rung = trial.user_attrs.get("rung", 0)
        shown = f"{trial.values[0] * 100:.2f}" if rung else f"{trial.values[0]:.2f}"
        row = next(line for line in front_part.splitlines() if line.startswith(f"| {trial.number} |"))
        assert shown in row and (not mixed_units or ("%" if rung else "naswot score") in row)
    if rungs == {0}:
        assert "accuracy (naswot score)" in front_part and "Hypervolume" in front_part
    elif 0 not in rungs:
        assert "accuracy (%)" in front_part and "Hypervolume" in front_part
    else:
        assert "| score |" in front_part and "No hypervolume" in front_part
    comparisons = [c for row in seed_dominance(study) for c in row["versus"].values() if not c["same_trial"]]
    seeds_part = summary[summary.index("## Front against the seeds") :]
    assert any(c["rung"] for c in comparisons) == ("points," in seeds_part)
    assert (tmp_path / "out" / "pareto.png").is_file()


def test_a_front_of_rung_0_and_trained_points_shows_each_in_its_own_unit(naswot_run: Path, tmp_path: Path) -> None:
    # A front mixing units: an architecture faster than every other, never promoted, so on the front by its
    # naswot score alone, beside points trained at longer rungs. Its score is the lowest, so it displaces none.
    run_dir = tmp_path / "run"
    shutil.copytree(naswot_run, run_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))
    trained = [t for t in front(study) if t.user_attrs.get("rung", 0) > 0]
    assert trained, "the tiny run's front has no trained point to mix with"
    template = trained[0]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    score = min(t.values[0] for t in complete) - 1.0
    latency = min(t.values[1] for t in complete) / 2
    study.add_trial(
        optuna.trial.create_trial(
            values=[score, latency],
            params=template.params,
            distributions=template.distributions,
            user_attrs={**template.user_attrs, "config_key": "crafted-fastest"},
            constraints=template.constraints,
        )
    )
    crafted = study.trials[-1].number
    points = front(read_study(run_dir))
    assert crafted in [t.number for t in points] and {t.user_attrs.get("rung", 0) for t in points} > {0}
    export_run(run_dir, out_dir=tmp_path / "out", formats=("yaml",))
    front_part = _front_part((tmp_path / "out" / "summary.md").read_text())
    assert "| score |" in front_part and "No hypervolume" in front_part and "Hypervolume:" not in front_part
    header = [cell.strip() for cell in next(line for line in front_part.splitlines() if "| trial |" in line).split("|")]
    for trial in points:
        row = next(line for line in front_part.splitlines() if line.startswith(f"| {trial.number} |"))
        if trial.number == crafted:  # its latency is made up, so its template's interval does not hold it
            assert f"{score:.2f} naswot score" in row
            continue
        if trial.user_attrs.get("rung", 0) == 0:  # a point the run itself left at rung 0
            assert f"{trial.values[0]:.2f} naswot score" in row
        else:
            assert f"{trial.values[0] * 100:.2f} %" in row
        cells = dict(zip(header, (cell.strip() for cell in row.split("|")), strict=True))
        low, high = (float(ms) for ms in cells["judged 95% interval (ms)"].split(" to "))
        assert low <= float(cells["latency (ms)"]) <= high  # the judged latency inside its own interval
    assert (tmp_path / "out" / "pareto.png").is_file()


def test_a_seed_is_shown_at_its_highest_rung_as_the_front_is(naswot_run: Path, tmp_path: Path) -> None:
    # The front is shown at each point's highest rung; the seeds' table shows each seed the same way, in its unit.
    # The tiny space has no seeds: two fitted seeds are added, as copies of a feasible trial, one promoted to rung 1.
    run_dir = tmp_path / "run"
    shutil.copytree(naswot_run, run_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))
    template = next(t for t in study.trials if t.state == TrialState.COMPLETE and is_feasible(t))
    for name in ("xxs@96", "xs@96"):
        study.add_trial(
            optuna.trial.create_trial(
                values=template.values,
                params=template.params,
                distributions=template.distributions,
                user_attrs={**template.user_attrs, "config_key": f"crafted-{name}", "seed": name},
                constraints=template.constraints,
            )
        )
    promoted = study.trials[-2].number
    result = RungResult(trial=promoted, rung=1, epochs=1.0, score=0.4321, seconds=1.0)
    study.set_user_attr(result.key, result.to_dict())
    export_run(run_dir, out_dir=tmp_path / "out", formats=("yaml",))
    summary = (tmp_path / "out" / "summary.md").read_text()
    seeds_part = summary[summary.index("## Front against the seeds") :].split("\n\n")[1]
    assert "| score | rung |" in seeds_part
    rows = {line.split("|")[1].strip(): line for line in seeds_part.splitlines()}
    assert "| 43.21 % | 1 |" in rows["xxs@96"]
    assert f"| {template.values[0]:.2f} naswot score | 0 |" in rows["xs@96"]
