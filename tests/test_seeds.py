"""Budget-fitted seeds: the fitting rule on a fake latency, the search enqueueing them, the summary comparing.

The rule (``mvit_nas.seeds``) is checked against a fake latency proportional to
multiply-adds, so every expectation is exact; the search runs with a predicted
latency (a small table built here), so "fits by the latency used to judge it" is
deterministic too.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import optuna
import pytest
from helpers import PREDICTOR_SPACE, TINY_SPACE, tiny_settings
from optuna.trial import TrialState

from mvit_nas import InputError
from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.cost import count_cost
from mvit_nas.latency import LatencySpec
from mvit_nas.predictor import LatencyTable, build_table
from mvit_nas.proxy import ProxySpec
from mvit_nas.report import export_run, fitted_seed_trials, seed_dominance
from mvit_nas.run import LATENCY_TABLE_FILE, TrialRecord, is_feasible
from mvit_nas.search import _enqueue_seeds, search
from mvit_nas.seeds import MEASURED_MARGIN, WIDTH_FACTORS, FittedSeed, fit_seeds, fitted_seeds, preset_of, seed_latency
from mvit_nas.settings import SearchSettings
from mvit_nas.space import TRAINING_KNOBS, knob_values, load_space, parse_space

SPACE = load_space()  # the default space: the presets' layout is a point of it
CHANNEL_KNOBS = [knob for knob in SPACE.choices if knob.endswith("_channels")]


def fake_ms(cfg: ArchConfig) -> float:
    """1 ms per 100 M multiply-adds: grows with resolution and width, as a real latency does."""
    return count_cost(cfg).flops / 1e8


def _settings(budget_ms: float, source: str = "predicted") -> SearchSettings:
    return SearchSettings(budget_ms=budget_ms, latency_source=source)


def _at(name: str, resolution: int) -> ArchConfig:
    return SPACE.decode({**SPACE.params_of(preset(name)), "resolution": resolution})


def _scaled(name: str, factor: float) -> ArchConfig:
    """The preset at the smallest resolution, every width times ``factor`` snapped to the nearest choice."""
    values = knob_values(preset(name))
    params = {knob: v for knob, v in values.items() if knob not in TRAINING_KNOBS}
    for knob in CHANNEL_KNOBS:
        params[knob] = min(SPACE.choices[knob], key=lambda c: (abs(c - values[knob] * factor), c))
    return SPACE.decode({**params, "resolution": min(SPACE.choices["resolution"])})


def _names(fits: dict[str, FittedSeed | None]) -> dict[str, str | None]:
    return {name: fit.name if fit else None for name, fit in fits.items()}


# --- the rule, on a fake latency ----------------------------------------------------------------


def test_the_largest_fitting_resolution_is_chosen() -> None:
    budget = 4.0
    fits = fit_seeds(_settings(budget), fake_ms)
    resolutions = sorted(SPACE.choices["resolution"])
    for name in PRESETS:
        fitting = [r for r in resolutions if fake_ms(_at(name, r)) <= budget]
        fit = fits[name]
        assert fit is not None and fitting, name
        assert fit.name == f"{name}@{max(fitting)}" and fit.config == _at(name, max(fitting))
        assert fit.width == 1.0 and fit.latency_ms == fake_ms(fit.config) <= budget
        assert fit.params == SPACE.params_of(fit.config) and preset_of(fit.name) == name
    assert _names(fits) == {"xxs": "xxs@224", "xs": "xs@160", "s": "s@96"}


def test_a_measured_fit_leaves_a_margin_for_the_trials_own_measurement() -> None:
    # xxs@160 is 1.48 "ms": within 1.5, but not within 0.95 x 1.5.
    assert MEASURED_MARGIN * 1.5 < fake_ms(_at("xxs", 160)) <= 1.5
    assert fit_seeds(_settings(1.5), fake_ms)["xxs"].name == "xxs@160"  # predicted: the trial gets the same number
    assert fit_seeds(_settings(1.5, "measured"), fake_ms)["xxs"].name == "xxs@128"


def test_a_published_model_that_fits_keeps_its_name_and_costs_one_latency_each() -> None:
    judged: collections.Counter[ArchConfig] = collections.Counter()

    def counting(cfg: ArchConfig) -> float:
        judged[cfg] += 1
        return fake_ms(cfg)

    fits = fit_seeds(_settings(1000.0), counting)
    assert _names(fits) == {"xxs": "xxs", "xs": "xs", "s": "s"}
    assert all(fit is not None and fit.published and fit.resolution == 256 for fit in fits.values())
    assert sum(judged.values()) == 3


def test_width_is_scaled_when_no_resolution_fits() -> None:
    budget = 0.45  # xxs at 96 px is 0.51
    judged: collections.Counter[ArchConfig] = collections.Counter()

    def counting(cfg: ArchConfig) -> float:
        judged[cfg] += 1
        return fake_ms(cfg)

    fits = fit_seeds(_settings(budget), counting)
    assert _names(fits) == {"xxs": "xxs@96w0.85", "xs": "xs@96w0.55", "s": "s@96w0.35"}
    assert max(judged.values()) == 1, "a configuration judged twice"
    for name, fit in fits.items():
        assert fit is not None and fit.latency_ms <= budget and fit.config == _scaled(name, fit.width)
        published = knob_values(preset(name))
        for knob, value in knob_values(fit.config).items():
            if knob in CHANNEL_KNOBS:
                assert value <= published[knob], (name, knob)
            elif knob not in (*TRAINING_KNOBS, "resolution"):
                assert value == published[knob], (name, knob)  # depths, heads, ratios, patches as published
        # Every wider factor gives a config that does not fit: this is the largest factor that fits.
        assert all(fake_ms(_scaled(name, f)) > budget for f in WIDTH_FACTORS if f > fit.width), name


def test_bisection_finds_what_a_scan_finds() -> None:
    for budget in (0.3, 0.45, 0.7, 1.0, 1.5, 2.0, 3.0, 6.0, 12.0, 25.0):
        for name, fit in fit_seeds(_settings(budget), fake_ms).items():
            fitting = [r for r in SPACE.choices["resolution"] if fake_ms(_at(name, r)) <= budget]
            if fitting:
                assert fit is not None and fit.width == 1.0 and fit.resolution == max(fitting), (budget, name)
            elif fit is not None:
                assert fit.width < 1.0 and fit.latency_ms <= budget and fake_ms(_at(name, 96)) > budget


def test_nothing_fits_and_a_space_without_the_layout_has_no_fitted_seed() -> None:
    assert fit_seeds(_settings(0.1), fake_ms) == {"xxs": None, "xs": None, "s": None}
    assert fit_seeds(tiny_settings(space=TINY_SPACE), fake_ms) == {}  # no preset's depths and heads in it
    assert (preset_of("xxs@96w0.5"), preset_of("s"), preset_of("tiny@64")) == ("xxs", "s", None)


def test_seeds_are_enqueued_after_the_256px_ones_and_never_twice() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    generous = [fit for fit in fit_seeds(_settings(1000.0), fake_ms).values() if fit]
    tight = [fit for fit in fit_seeds(_settings(1.5), fake_ms).values() if fit]
    _enqueue_seeds(study, SPACE, [generous[0], *tight])  # xxs fits as published: queued once, as trial 0
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [TrialRecord.of(t).seed for t in waiting] == ["xxs", "xs", "s", "xxs@160", "xs@96", "s@96w0.7"]
    assert waiting[3].system_attrs["fixed_params"] == tight[0].params


# --- the run's latency source -------------------------------------------------------------------


def test_the_measured_source_times_a_config_and_a_driver_without_the_device_fits_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = tiny_settings()
    cfg = parse_space(TINY_SPACE).decode({})
    assert seed_latency(settings)(cfg) > 0.0
    with pytest.raises(ValueError, match="latency table"):
        seed_latency(dataclasses.replace(settings, latency_source="predicted"))

    def unavailable(spec: LatencySpec) -> None:
        raise InputError("--device", "CUDA was requested but torch.cuda.is_available() is False on this machine")

    monkeypatch.setattr("mvit_nas.seeds.check_available", unavailable)
    with pytest.warns(UserWarning, match="no budget-fitted seeds"):
        assert fitted_seeds(dataclasses.replace(settings, space=None), None, 10) == []


# --- a real search, with a predicted latency --------------------------------------------------------

SHORT = {"warmup": 1, "min_repeats": 3, "min_seconds": 0.0, "max_repeats": 3}
TABLE_SPEC = LatencySpec(device="cpu", backend="onnxruntime", threads=1, **SHORT)
# A zero-cost proxy: the fitted seeds are full-width MobileViTs, and what is tested is which trials run.
QUICK_PROXY = ProxySpec(kind="grad_norm", batch_size=16, resolution=32)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    blocks = {"stem": 3, "mv2": 6, "mobilevit": 6, "head": 3}
    space = parse_space(PREDICTOR_SPACE)
    return build_table(TABLE_SPEC, space, blocks=blocks, whole_configs=3, block_timing=SHORT, progress=False)


def test_a_search_runs_the_fitted_seeds_and_the_summary_compares_with_them(table: LatencyTable, tmp_path: Path) -> None:
    # Half the predicted xxs at 256 px: the published seeds are over budget, smaller variants fit.
    budget = table.predict(_at("xxs", 256)) / 2
    settings = tiny_settings(budget, space=None, latency=TABLE_SPEC, proxy=QUICK_PROXY, latency_source="predicted")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    table.save(run_dir / LATENCY_TABLE_FILE)  # the run's predictor: the search reads it from the run folder
    expected = fit_seeds(settings, table.predict, num_classes=10)  # the synthetic dataset has 10 classes
    enqueued = [fit for fit in expected.values() if fit is not None and not fit.published]
    assert enqueued and expected["xxs"] is not None and not expected["xxs"].published

    outcome = search(settings, run_dir, trials=3 + len(enqueued), executor="local", workers=1)
    trials = sorted(outcome.study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [TrialRecord.of(t).seed for t in trials] == ["xxs", "xs", "s", *(fit.name for fit in enqueued)]
    assert not any(is_feasible(t) for t in trials[:3])  # the 256 px seeds: over budget, never trained
    for trial, fit in zip(trials[3:], enqueued, strict=True):
        record = TrialRecord.of(trial)
        assert trial.state == TrialState.COMPLETE and record.config == fit.config
        assert record.latency is not None and record.latency.predicted
        assert record.latency.median_ms == pytest.approx(fit.latency_ms) and trial.values[1] <= budget
        assert is_feasible(trial) and record.feasible and record.accuracy is not None
    fitted = fitted_seed_trials(outcome.study)
    assert {name: t.number for name, t in fitted.items()} == {fit.name: 3 + i for i, fit in enumerate(enqueued)}
    for row in seed_dominance(outcome.study):
        assert set(row["versus"]) == set(fitted)  # the front against the fitted seeds, never the 256 px ones

    summary = (export_run(run_dir).out_dir / "summary.md").read_text()
    for number, name in enumerate(PRESETS):
        fit = expected[name]
        if fit is None:
            assert f"| {name} | {number} | COMPLETE | no, over budget at every size in the space |" in summary
        else:
            verdict = f"no, over budget at 256 px; fitted variant: {fit.name}"
            assert f"| {name} | {number} | COMPLETE | {verdict} |" in summary
    for number, fit in enumerate(enqueued, start=3):
        assert f"| {fit.name} | {number} | COMPLETE | yes |" in summary
    assert "The front against the seeds fitted to the budget" in summary
    assert "any within-budget point dominates" not in summary
    header = next(line for line in summary.splitlines() if line.startswith("| trial | ") and "@" in line)
    assert all(f" {name} |" in header for name in fitted)
