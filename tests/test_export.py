"""Exports of a run folder, against a real Optuna SQLite study built trial by trial.

The study follows the schema the search writes (values [accuracy, latency], the
``latency_over_budget_ms`` constraint, user attributes ``config``, ``latency``,
``seed``, ``duplicate_of``...), with tiny 64 px configs so that ONNX export and
ONNX Runtime take a fraction of a second, and with every kind of trial: seeds
(one on the front, one dominated, one over budget), a dominated point, an
over-budget point, a failed trial, an interrupted one and a duplicate.

The weights files of this fabricated study stand for what the search writes;
``tests/test_trained_exports.py`` exports weights a real search wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from mvit_nas import ArchConfig, InputError, build_model, load_config, preset
from mvit_nas.config import MobileViTStageConfig, MV2StageConfig
from mvit_nas.report import (
    ExportResult,
    export_run,
    fitted_seed_trials,
    front,
    hypervolume,
    seed_dominance,
    trials_frame,
)
from mvit_nas.report.verification import VerifyRecord
from mvit_nas.run import SETTINGS_FILE, STORAGE_FILE, STUDY_NAME, VERIFY_FILE, weights_path

BUDGET_MS = 5.0
NUM_CLASSES = 10


def _vit(channels: int) -> MobileViTStageConfig:
    return MobileViTStageConfig(
        out_channels=channels,
        mv2_exp=2,
        transformer_channels=16,
        ffn_dim=32,
        transformer_blocks=1,
        num_heads=2,
        patch_h=2,
        patch_w=2,
    )


def _tiny(width: int) -> ArchConfig:
    return dataclasses.replace(
        preset("xxs"),
        stem_channels=8,
        layer1=MV2StageConfig(width, 2, 1),
        layer2=MV2StageConfig(width, 2, 1),
        layer3=_vit(16),
        layer4=_vit(16),
        layer5=_vit(width),
        resolution=64,
        num_classes=NUM_CLASSES,
    )


def _at_64(name: str) -> ArchConfig:
    return dataclasses.replace(preset(name), resolution=64, num_classes=NUM_CLASSES)


# number -> (config, seed, state, accuracy (None: not trained), latency ms (None: never measured), extra attrs)
TRIALS: list[tuple[ArchConfig, str | None, TrialState, float | None, float | None, dict[str, Any]]] = [
    (_at_64("xxs"), "xxs", TrialState.COMPLETE, 0.55, 3.0, {}),  # 0: a seed on the front
    (_at_64("xs"), "xs", TrialState.COMPLETE, 0.45, 4.5, {}),  # 1: a seed dominated by trials 0 and 4
    (_at_64("s"), "s", TrialState.COMPLETE, None, 9.0, {}),  # 2: a seed over budget, never trained
    (_tiny(8), None, TrialState.COMPLETE, 0.30, 1.0, {}),  # 3: front, fastest
    (_tiny(16), None, TrialState.COMPLETE, 0.50, 2.5, {}),  # 4: front, its weights checked bit for bit
    (_tiny(24), None, TrialState.COMPLETE, 0.35, 2.8, {}),  # 5: feasible, dominated by 4: weights pruned
    (_tiny(32), None, TrialState.COMPLETE, None, 6.0, {}),  # 6: over budget
    (_tiny(40), None, TrialState.FAIL, None, 2.0, {"failure": "diverged: loss is nan"}),  # 7
    (_tiny(16), None, TrialState.COMPLETE, 0.50, 2.5, {"duplicate_of": 4, "duration_s": 0.0}),  # 8: duplicate
    (_tiny(48), None, TrialState.FAIL, None, None, {"failure": "interrupted"}),  # 9
]
EXPECTED_FRONT = [3, 4, 0]  # latency order
TRAINED_TRIAL = 4


def _latency(median: float, cfg: ArchConfig) -> dict[str, Any]:
    return {
        "median": median,
        "p10": median * 0.95,
        "p90": median * 1.05,
        "mean": median * 1.01,
        "n": 50,
        "device": "cpu",
        "backend": "onnxruntime",
        "batch_size": 1,
        "height": cfg.resolution,
        "width": cfg.resolution,
        "dtype": "float32",
        "threads": 2,
    }


def _frozen(number: int) -> optuna.trial.FrozenTrial:
    cfg, seed, state, accuracy, latency, extra = TRIALS[number]
    attrs: dict[str, Any] = {
        "config": cfg.to_dict(),
        "config_key": hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16],
        "params": 1000 + number,
        "flops": 10**6 * (number + 1),
        "accuracy": accuracy,
        "failure": None,
        "duration_s": 1.5,
        "trial_number": number,
    }
    if seed:
        attrs["seed"] = seed
    if latency is not None:
        attrs["latency"] = _latency(latency, cfg)
        attrs["feasible"] = latency <= BUDGET_MS
    attrs.update(extra)
    params = {"layer5.out_channels": cfg.layer5.out_channels}
    choices = sorted({trial_cfg.layer5.out_channels for trial_cfg, *_ in TRIALS})
    distributions = {"layer5.out_channels": CategoricalDistribution(choices)}
    if state == TrialState.FAIL:
        return optuna.trial.create_trial(state=state, params=params, distributions=distributions, user_attrs=attrs)
    assert latency is not None
    return optuna.trial.create_trial(
        values=[accuracy if latency <= BUDGET_MS else 0.0, latency],
        params=params,
        distributions=distributions,
        user_attrs=attrs,
        constraints={"latency_over_budget_ms": latency - BUDGET_MS},
    )


def _settings() -> dict[str, Any]:
    return {
        "budget_ms": BUDGET_MS,
        "space": None,
        # Typed settings hold a resolved spec (no "auto"); 4 threads here, 2 in the trials' measurements.
        "latency": {"device": "cpu", "backend": "onnxruntime", "batch_size": 1, "dtype": "float32", "threads": 4},
        "proxy": {"kind": "train", "epochs": 0.25, "resolution": 64},
        "dataset": "synthetic",
        "sampler": "tpe",
        "seed": 0,
    }


def _new_run(run_dir: Path, numbers: list[int]) -> optuna.Study:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SETTINGS_FILE).write_text(yaml.safe_dump(_settings(), sort_keys=False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{run_dir / STORAGE_FILE}",
        directions=["maximize", "minimize"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "latency_ms"])
    for number in numbers:
        study.add_trial(_frozen(number))
    return study


def _trained_state(number: int = TRAINED_TRIAL) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234 + number)
    return build_model(TRIALS[number][0]).state_dict()


def _save_weights(run_dir: Path, numbers: list[int], verified: bool = False) -> None:
    """Stands for what the search (or the verification stage) writes for these trials."""
    for number in numbers:
        path = weights_path(run_dir, number, verified=verified)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_trained_state(number) if not verified else _verified_state(number), path)


def _verified_state(number: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(99 + number)
    return build_model(TRIALS[number][0]).state_dict()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    _new_run(run_dir, list(range(len(TRIALS))))
    _save_weights(run_dir, [*EXPECTED_FRONT, 5])  # every feasible trial the search trained (not the duplicate 8)
    return run_dir


@dataclasses.dataclass(frozen=True)
class Exported:
    run_dir: Path
    result: ExportResult
    before: dict[str, str]  # digests of study.db and run.yaml before the export


@pytest.fixture(scope="module")
def exported(run: Path) -> Exported:
    """One full export (configs, ONNX, timm), shared by the tests below."""
    before = {name: _digest(run / name) for name in (STORAGE_FILE, SETTINGS_FILE)}
    return Exported(run, export_run(run, formats=("yaml", "onnx", "timm")), before)


def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{run_dir / STORAGE_FILE}")


# --- the schema round-trips through SQLite ---------------------------------------------------


def test_study_follows_the_schema(run: Path) -> None:
    trials = _study(run).trials
    assert [t.state for t in trials] == [state for _, _, state, *_ in TRIALS]
    assert trials[6].constraints == {"latency_over_budget_ms": pytest.approx(1.0)}
    assert trials[6].system_attrs["constraints:latency_over_budget_ms"] == pytest.approx(1.0)


# --- pareto.py -------------------------------------------------------------------------------


def _brute_force_front() -> list[int]:
    """Non-dominated feasible completed trials, one per config, by latency: written out independently."""
    points = {
        n: (acc, lat)
        for n, (cfg, _, state, acc, lat, extra) in enumerate(TRIALS)
        if state == TrialState.COMPLETE and lat is not None and lat <= BUDGET_MS and "duplicate_of" not in extra
    }

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in points.values())

    return sorted((n for n, p in points.items() if not dominated(p)), key=lambda n: points[n][1])


def test_front_is_the_non_dominated_feasible_set(run: Path) -> None:
    assert _brute_force_front() == EXPECTED_FRONT
    assert [t.number for t in front(_study(run))] == EXPECTED_FRONT


def test_hypervolume_uses_the_budget_reference() -> None:
    points = [(0.30, 1.0), (0.50, 2.5), (0.55, 3.0)]
    assert hypervolume(points, (0.0, BUDGET_MS)) == pytest.approx(0.30 * 1.5 + 0.50 * 0.5 + 0.55 * 2.0)
    # Points outside the reference box add nothing; none at all is an empty area.
    assert hypervolume([*points, (0.9, 7.0)], (0.0, BUDGET_MS)) == pytest.approx(1.8)
    assert hypervolume([], (0.0, BUDGET_MS)) == 0.0


def test_seed_dominance(run: Path) -> None:
    # xxs and xs are within budget as published, so each is its own fitted seed; s is over budget and,
    # with no fitted variant in this study, no baseline (it used to be "dominated" by every front point).
    assert {name: t.number for name, t in fitted_seed_trials(_study(run)).items()} == {"xxs": 0, "xs": 1}
    rows = {row["trial"]: row for row in seed_dominance(_study(run))}
    assert list(rows) == EXPECTED_FRONT
    assert rows[3]["dominates"] == []  # faster than xs but less accurate
    assert rows[4]["dominates"] == ["xs"]
    assert rows[0]["dominates"] == ["xs"]
    assert rows[0]["versus"]["xxs"]["same_trial"]
    versus_xs = rows[4]["versus"]["xs"]
    assert versus_xs["accuracy_gain"] == pytest.approx(5.0)  # points
    assert versus_xs["latency_saved_ms"] == pytest.approx(2.0)
    assert versus_xs["latency_saved_pct"] == pytest.approx(100 * 2.0 / 4.5)
    assert all("s" not in row["versus"] for row in rows.values())


# --- tables ------------------------------------------------------------------------------------


def test_trials_csv(exported: Exported) -> None:
    run_dir = exported.run_dir
    table = pd.read_csv(run_dir / "trials.csv")
    assert len(table) == len(TRIALS)
    required = [
        "number",
        "state",
        "seed",
        "config",
        "config.layer3.num_heads",
        "config.resolution",
        "params",
        "flops",
        "latency_median_ms",
        "latency_p10_ms",
        "latency_p90_ms",
        "latency_mean_ms",
        "latency_n",
        "device",
        "backend",
        "batch_size",
        "resolution",
        "dtype",
        "threads",
        "accuracy",
        "feasible",
        "duration_s",
        "failure",
        "duplicate_of",
    ]
    assert set(required) <= set(table.columns)
    rows = table.set_index("number")
    assert rows.loc[7, "state"] == "FAIL" and rows.loc[7, "failure"] == "diverged: loss is nan"
    assert pd.isna(rows.loc[6, "accuracy"]) and not rows.loc[6, "feasible"]  # over budget: not trained
    assert rows.loc[8, "duplicate_of"] == 4
    assert rows.loc[0, "seed"] == "xxs" and rows.loc[0, "latency_median_ms"] == 3.0
    assert rows.loc[0, "resolution"] == 64 and rows.loc[0, "device"] == "cpu" and rows.loc[0, "threads"] == 2
    assert ArchConfig.from_dict(json.loads(rows.loc[5, "config"])) == TRIALS[5][0]
    assert rows.loc[5, "config.layer5.out_channels"] == 24
    assert pd.api.types.is_integer_dtype(table["params"])  # missing values do not turn integers into floats


def test_pareto_csv(exported: Exported) -> None:
    run_dir, result = exported.run_dir, exported.result
    pareto = pd.read_csv(run_dir / "pareto.csv", keep_default_na=False)
    assert list(pareto["number"]) == EXPECTED_FRONT == list(result.front)
    assert result.front_size == 3
    assert list(pareto["config_file"]) == [f"configs/trial_{n:04d}.yaml" for n in EXPECTED_FRONT]
    assert list(pareto["dominates_seeds"]) == ["", "xs", "xs"]  # s is over budget: no baseline
    assert set(pd.read_csv(run_dir / "trials.csv").columns) <= set(pareto.columns)


def test_trials_frame_of_an_empty_study() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    frame = trials_frame(study)
    assert frame.empty and {"number", "state", "latency_median_ms", "failure"} <= set(frame.columns)


# --- configs, plot, summary ---------------------------------------------------------------------


def test_config_files_load_back(exported: Exported) -> None:
    run_dir, result = exported.run_dir, exported.result
    for number in EXPECTED_FRONT:
        path = run_dir / "configs" / f"trial_{number:04d}.yaml"
        assert path in result.paths
        assert load_config(path) == TRIALS[number][0]
    assert sorted(p.name for p in (run_dir / "configs").iterdir()) == [f"trial_{n:04d}.yaml" for n in (0, 3, 4)]


def test_json_configs_and_out_dir(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    (out / "configs").mkdir(parents=True)
    (out / "configs" / "trial_0099.yaml").write_text("stale: true\n")  # from an older front
    result = export_run(run, out_dir=out, formats="json")
    for number in EXPECTED_FRONT:
        assert load_config(out / "configs" / f"trial_{number:04d}.json") == TRIALS[number][0]
    assert not (out / "configs" / "trial_0099.yaml").exists()
    assert result.weights_trained is None  # no model exported
    assert {p.parent for p in result.paths} <= {out, out / "configs"}


def test_plot_is_a_png(exported: Exported) -> None:
    run_dir, result = exported.run_dir, exported.result
    assert (run_dir / "pareto.png") in result.paths
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary(exported: Exported) -> None:
    run_dir, result = exported.run_dir, exported.result
    summary = (run_dir / "summary.md").read_text()
    assert result.hypervolume == pytest.approx(1.8)
    assert "Hypervolume: **1.8**" in summary
    for seed in ("xxs", "xs", "s"):
        assert f"| {seed} |" in summary
    assert "5 ms" in summary and "synthetic" in summary and "tpe" in summary
    assert "cpu, onnxruntime, batch 1, float32, 2 threads" in summary  # measured spec, not run.yaml's
    assert "**dominates**: +5.0 points, 2.00 ms (44 %) faster" in summary  # trial 4 against xs
    assert "| 10 | 9 | 8 | 6 | 2 | 1 | 1 | 1 | 0 |" in summary  # the counts row
    assert "proxy-trained (0.25 epochs, weights/trial_0004.pt)" in summary
    assert "xxs (trial 0) is itself on the front" in summary
    assert "| s | 2 | COMPLETE | no, over budget at every size in the space |" in summary
    assert "any within-budget point dominates" not in summary
    # These trials were timed raw, not judged against references: a raw spread, and no judged interval.
    assert "| latency (ms) | judged 95% interval (ms) | raw p10 to p90 (ms) |" in summary
    assert "| 2.500 | — | 2.375 to 2.625 |" in summary  # trial 4's row


# --- models ---------------------------------------------------------------------------------------


def test_onnx_files_run(exported: Exported) -> None:
    import onnxruntime as ort

    run_dir, result = exported.run_dir, exported.result
    for number in EXPECTED_FRONT:
        path = run_dir / "onnx" / f"trial_{number:04d}.onnx"
        assert path in result.paths
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (feed,) = session.get_inputs()
        image = np.random.default_rng(number).standard_normal((1, 3, 64, 64)).astype(np.float32)
        (logits,) = session.run(None, {feed.name: image})
        assert logits.shape == (1, NUM_CLASSES)
        model = build_model(TRIALS[number][0]).eval()  # the ONNX model carries the trained weights
        model.load_state_dict(_trained_state(number))
        with torch.no_grad():
            expected = model(torch.from_numpy(image)).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)
    assert sorted(p.name for p in (run_dir / "onnx").iterdir()) == [f"trial_{n:04d}.onnx" for n in (0, 3, 4)]


def test_timm_state_dicts(exported: Exported) -> None:
    run_dir, result = exported.run_dir, exported.result
    assert result.weights_trained is True
    assert result.weights[TRAINED_TRIAL] == "proxy-trained (0.25 epochs, weights/trial_0004.pt)"
    readme = (run_dir / "timm" / "README.txt").read_text()
    assert "trial_0004.pth: proxy-trained (0.25 epochs, weights/trial_0004.pt)" in readme
    for number in EXPECTED_FRONT:
        state = torch.load(run_dir / "timm" / f"trial_{number:04d}.pth", weights_only=True)
        build_model(TRIALS[number][0]).load_state_dict(state, strict=True)
        assert all(torch.equal(state[k], v) for k, v in _trained_state(number).items())


def test_timm_variant_loads_into_timm(exported: Exported) -> None:
    timm = pytest.importorskip("timm")
    run_dir = exported.run_dir
    state = torch.load(run_dir / "timm" / "trial_0000.pth", weights_only=True)  # trial 0 is xxs
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=NUM_CLASSES)
    model.load_state_dict(state, strict=True)
    assert "mobilevit_xxs" in (run_dir / "timm" / "README.txt").read_text()


def _onnx_weights(path: Path) -> str:
    import onnx

    return {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}["mvit_nas.weights"]


def test_onnx_metadata_names_the_weights(exported: Exported) -> None:
    for number in EXPECTED_FRONT:
        label = _onnx_weights(exported.run_dir / "onnx" / f"trial_{number:04d}.onnx")
        assert label == f"proxy-trained (0.25 epochs, weights/trial_{number:04d}.pt)" == exported.result.weights[number]


def test_export_prunes_the_weights_to_the_front(exported: Exported) -> None:
    run_dir = exported.run_dir
    assert set(exported.result.pruned) <= {weights_path(run_dir, 5)}  # another export may have pruned it first
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [f"trial_{n:04d}.pt" for n in (0, 3, 4)]


def test_pruning_keeps_what_a_live_search_may_still_need(tmp_path: Path) -> None:
    study = _new_run(tmp_path, list(range(len(TRIALS))))
    in_flight = study.ask().number  # the driver saves a trial's weights before it tells the study
    _save_weights(tmp_path, [*EXPECTED_FRONT, 5, 9])  # 9: left by a search killed before it told the study
    _save_weights(tmp_path, [4], verified=True)
    torch.save(_trained_state(5), weights_path(tmp_path, in_flight))
    result = export_run(tmp_path)
    assert sorted(result.pruned) == [weights_path(tmp_path, 5), weights_path(tmp_path, 9)]
    kept = [f"trial_{n:04d}.pt" for n in (*sorted(EXPECTED_FRONT), in_flight)] + ["trial_0004.verified.pt"]
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == sorted(kept)


def test_verified_weights_come_before_the_proxy_trained_ones(tmp_path: Path) -> None:
    _new_run(tmp_path, list(range(len(TRIALS))))
    _save_weights(tmp_path, EXPECTED_FRONT)
    _save_weights(tmp_path, [4], verified=True)
    job = VerifyRecord(trial=4, seed=0, epochs=2.5, accuracy=0.6, proxy_score=0.5, seconds=1.0)
    (tmp_path / VERIFY_FILE).write_text(json.dumps([dataclasses.asdict(job)]))  # the job that wrote the file
    result = export_run(tmp_path, formats=("timm",))
    assert result.weights[4] == "verified (2.5 epochs, training seed 0, weights/trial_0004.verified.pt)"
    assert result.weights[3] == "proxy-trained (0.25 epochs, weights/trial_0003.pt)"
    state = torch.load(tmp_path / "timm" / "trial_0004.pth", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in _verified_state(4).items())
    assert "trial_0004.pth: verified (" in (tmp_path / "timm" / "README.txt").read_text()


@pytest.mark.parametrize("problem", ["missing", "another architecture"])
def test_models_without_trained_weights_are_exported_only_when_asked(tmp_path: Path, problem: str) -> None:
    _new_run(tmp_path, list(range(len(TRIALS))))
    _save_weights(tmp_path, [0, 4])
    if problem == "another architecture":
        torch.save(_trained_state(4), weights_path(tmp_path, 3))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError) as error:
        export_run(tmp_path, formats=("yaml", "onnx", "timm"))
    assert error.value.field == "--untrained"
    assert "trial 3" in str(error.value) and "trial 4" not in str(error.value)
    assert ("does not fit" if problem == "another architecture" else "no weights/trial_0003.pt") in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written: no table, no model
    result = export_run(tmp_path, formats=("onnx",), untrained=True)
    assert result.weights_trained is False and result.weights[3].startswith("untrained")
    assert result.weights[4].startswith("proxy-trained")
    assert _onnx_weights(tmp_path / "onnx" / "trial_0003.onnx") == result.weights[3]


# --- safety -----------------------------------------------------------------------------------------


def test_export_only_reads_the_run(exported: Exported) -> None:
    run_dir, before = exported.run_dir, exported.before
    assert {name: _digest(run_dir / name) for name in before} == before
    assert not list(run_dir.rglob("*.tmp"))  # no temporary file left behind
    assert not [p for p in (run_dir / "onnx").iterdir() if p.name.startswith(".")]


def test_an_interrupted_write_keeps_the_previous_file(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    export_run(run, out_dir=tmp_path)
    previous = (tmp_path / "pareto.png").read_bytes()

    def interrupted(self: Figure, path: Path, **_: Any) -> None:
        Path(path).write_bytes(b"\x89PNG half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(run, out_dir=tmp_path)
    assert (tmp_path / "pareto.png").read_bytes() == previous
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("make", ["missing", "empty", "settings only", "no study"])
def test_a_folder_without_a_run_is_refused(tmp_path: Path, make: str) -> None:
    run_dir = tmp_path / "run"
    if make != "missing":
        run_dir.mkdir()
    if make in ("settings only", "no study"):
        (run_dir / SETTINGS_FILE).write_text(yaml.safe_dump(_settings()))
    if make == "no study":
        optuna.create_study(study_name="other", storage=f"sqlite:///{run_dir / STORAGE_FILE}")
    with pytest.raises(InputError) as error:
        export_run(run_dir)
    assert error.value.field == "--run-dir"
    assert not (run_dir / "trials.csv").exists()


def test_a_corrupted_study_is_refused(tmp_path: Path) -> None:
    (tmp_path / SETTINGS_FILE).write_text(yaml.safe_dump(_settings()))
    (tmp_path / STORAGE_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(InputError) as error:
        export_run(tmp_path)
    assert error.value.field == "--run-dir"


def test_an_unknown_format_is_refused(run: Path) -> None:
    with pytest.raises(InputError) as error:
        export_run(run, formats=("yaml", "tflite"))
    assert error.value.field == "--format"
    assert "yaml, json, onnx, timm" in str(error.value)


# --- runs without a front ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numbers", "reason"),
    [
        ([], "the study has no trials yet"),
        ([7, 9], "no trial has completed (2 failed, 0 waiting or running)"),
        ([2, 6], "all 2 completed trials are over the 5 ms budget; the fastest, trial 1, measured 6 ms"),
    ],
)
def test_a_run_without_a_front_still_exports(tmp_path: Path, numbers: list[int], reason: str) -> None:
    _new_run(tmp_path, numbers)
    result = export_run(tmp_path, formats=("yaml", "onnx", "timm"))
    assert result.front == () and result.hypervolume == 0.0 and result.weights_trained is None
    assert len(pd.read_csv(tmp_path / "trials.csv")) == len(numbers)
    assert len(pd.read_csv(tmp_path / "pareto.csv")) == 0
    assert f"The front is empty: {reason}." in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "pareto.png").exists()


def test_a_live_run_exports(tmp_path: Path) -> None:
    """A search still running: a trial in flight, a seed still queued, a rollback journal on disk."""
    study = _new_run(tmp_path, [3, 4])
    study.ask().set_user_attr("config", TRIALS[5][0].to_dict())
    study.enqueue_trial({}, user_attrs={"seed": "xs"})
    (tmp_path / f"{STORAGE_FILE}-journal").write_bytes(b"")
    before = _digest(tmp_path / STORAGE_FILE)
    result = export_run(tmp_path)
    assert result.front == (0, 1)
    summary = (tmp_path / "summary.md").read_text()
    assert "| 4 | 2 | 2 | 2 | 0 | 0 | 0 | 0 | 2 |" in summary
    assert "| xs | 3 | WAITING |" in summary
    assert list(pd.read_csv(tmp_path / "trials.csv")["state"]) == ["COMPLETE", "COMPLETE", "RUNNING", "WAITING"]
    assert _digest(tmp_path / STORAGE_FILE) == before
