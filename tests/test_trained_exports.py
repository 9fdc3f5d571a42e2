"""Exports carry the weights a real search trained: saved by the driver, exported to ONNX and timm, never random.

Each run here is a real tiny search (in-process executor). Its latency figures are
fixed per config, so that which trials fit the budget does not depend on how busy
the machine is; everything else (the proxy training, the driver, the exports) is
what a user runs.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import FAST_LATENCY, FAST_PROXY, tiny_settings

from mvit_nas import ArchConfig, build_model, load_config
from mvit_nas.cli import main
from mvit_nas.latency import LatencySpec, LatencyStats
from mvit_nas.proxy import read_state_dict, train
from mvit_nas.report import export_run
from mvit_nas.run import DATA_DIR, TrialRecord, read_study, weights_path
from mvit_nas.search import search
from mvit_nas.settings import SearchSettings

BUDGET_MS = 5.0
FORMATS = ("--format", "onnx", "--format", "timm")


def _fixed_latency(cfg: ArchConfig, spec: LatencySpec, _budget_ms: float, _calibration: object) -> LatencyStats:
    """Within the budget for a narrow last stage, over it for a wide one."""
    ms = 1.0 if cfg.layer5.out_channels == 16 else 9.0
    return LatencyStats(ms, ms, ms, ms, 3, spec, peak_memory_mb=None)


def _search(run_dir: Path, settings: SearchSettings, trials: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        # The module, not the attribute mvit_nas.search (that is the function search).
        patch.setattr(importlib.import_module("mvit_nas.evaluation"), "judge_latency", _fixed_latency)
        search(settings, run_dir, trials=trials, executor="local", workers=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("searched") / "run"
    _search(run_dir, tiny_settings(budget_ms=BUDGET_MS), trials=8)
    return run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run to export: an export prunes the run's weights to the front."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(DATA_DIR, "onnx", "timm"))
    return copy


def _records(run_dir: Path) -> dict[int, TrialRecord]:
    return {t.number: TrialRecord.of(t) for t in read_study(run_dir).get_trials(deepcopy=False)}


def test_the_search_saves_the_weights_of_every_trained_trial(run: Path) -> None:
    records = _records(run)
    trained = [n for n, r in records.items() if r.feasible and r.duplicate_of is None]
    over_budget = [n for n, r in records.items() if r.feasible is False]
    assert trained and over_budget, "the seeded draws must give both kinds"
    assert sorted(p.name for p in (run / "weights").iterdir()) == [f"trial_{n:04d}.pt" for n in trained]
    for number in trained:  # each file holds a state dict of its trial's own architecture
        config = records[number].config
        assert config is not None
        build_model(config).load_state_dict(read_state_dict(weights_path(run, number)), strict=True)


def test_the_saved_weights_are_the_proxy_trained_ones(run: Path) -> None:
    number = min(n for n, r in _records(run).items() if r.feasible and r.duplicate_of is None)
    config = _records(run)[number].config
    assert config is not None
    # Training is bit-for-bit deterministic on CPU: the same proxy training gives the same tensors.
    size = FAST_PROXY.input_size(config.resolution)  # the proxy trains at its scale of the config's resolution
    data = tiny_settings(budget_ms=BUDGET_MS).load_data(run / DATA_DIR).at(size)
    again = train(config, data, FAST_PROXY.epochs, size, batch_size=FAST_PROXY.batch_size)
    saved = read_state_dict(weights_path(run, number))
    assert again.weights is not None and saved.keys() == again.weights.keys()
    assert all(torch.equal(saved[key], value) for key, value in again.weights.items())


def test_the_onnx_export_runs_the_trained_weights(run: Path, tmp_path: Path) -> None:
    copy = _copy(run, tmp_path)
    result = export_run(copy, formats=("onnx", "timm"))
    assert result.front and result.weights_trained is True
    off_front = {p.name for p in (run / "weights").iterdir()} - {f"trial_{n:04d}.pt" for n in result.front}
    assert {path.name for path in result.pruned} == off_front
    for number in result.front:
        model = build_model(load_config(copy / "configs" / f"trial_{number:04d}.yaml")).eval()
        model.load_state_dict(read_state_dict(weights_path(copy, number)), strict=True)
        image = np.random.default_rng(number).standard_normal((1, 3, 64, 64)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(image)).numpy()
        path = copy / "onnx" / f"trial_{number:04d}.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {session.get_inputs()[0].name: image})
        assert float(np.abs(logits - expected).max()) <= 1e-4
        metadata = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
        label = f"proxy-trained (0.01 epochs, weights/trial_{number:04d}.pt)"
        assert metadata["mvit_nas.weights"] == label == result.weights[number]
        assert f"trial_{number:04d}.pth: {label}" in (copy / "timm" / "README.txt").read_text()


def test_the_timm_export_of_a_searched_xxs_loads_into_timm(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    # The default space holds the presets: trial 0 is the xxs seed, trained by the search.
    settings = SearchSettings(budget_ms=1e4, latency=FAST_LATENCY, proxy=FAST_PROXY)
    _search(tmp_path / "run", settings, trials=1)
    result = export_run(tmp_path / "run", formats=("timm",))
    assert result.front == (0,) and result.weights[0].startswith("proxy-trained")
    state = torch.load(tmp_path / "run" / "timm" / "trial_0000.pth", weights_only=True)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10)
    model.load_state_dict(state, strict=True)
    saved = read_state_dict(weights_path(tmp_path / "run", 0))
    assert all(torch.equal(state[key], value) for key, value in saved.items())


def test_no_export_writes_random_weights_unless_asked(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(run, tmp_path)
    shutil.rmtree(copy / "weights")  # a run whose weights were deleted
    assert main(["export", "--run-dir", str(copy), *FORMATS]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "--untrained" in error
    assert not (copy / "onnx").exists() and not (copy / "timm").exists()

    assert main(["export", "--run-dir", str(copy), *FORMATS, "--untrained"]) == 0
    readme = (copy / "timm" / "README.txt").read_text()
    for number in export_run(copy).front:
        assert f"trial_{number:04d}.pth: untrained" in readme
        metadata = onnx.load(str(copy / "onnx" / f"trial_{number:04d}.onnx")).metadata_props
        assert {entry.key: entry.value for entry in metadata}["mvit_nas.weights"].startswith("untrained")
