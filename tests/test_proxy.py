"""Accuracy proxies: deterministic training, divergence, zero-cost scores, resumable checkpoints, timm init."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mvit_nas.config import ArchConfig, MobileViTStageConfig, MV2StageConfig
from mvit_nas.data import DatasetSpec, ProxyData, load_dataset
from mvit_nas.model import build_model, to_timm
from mvit_nas.proxy import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    ProxySpec,
    TrialFailed,
    evaluate_proxy,
    read_state_dict,
    train,
)
from mvit_nas.validate import InputError

RESOLUTION = 32
# Small enough that a few optimisation steps take well under a second.
TINY = ArchConfig(
    stem_channels=8,
    layer1=MV2StageConfig(8, 2, 1),
    layer2=MV2StageConfig(12, 2, 1),
    layer3=MobileViTStageConfig(16, 2, 16, 16, 1, 2, 2, 2),
    layer4=MobileViTStageConfig(16, 2, 16, 32, 1, 2, 2, 2),
    layer5=MobileViTStageConfig(16, 2, 16, 16, 1, 2, 2, 2),
    resolution=64,
)
FAST = {"batch_size": 16, "seed": 3}


@pytest.fixture(scope="module")
def data() -> ProxyData:
    return load_dataset(DatasetSpec("synthetic", seed=1), RESOLUTION, train_size=64, val_size=32)


def _timeless(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


def _run(data: ProxyData, **overrides: Any) -> tuple[float, list[dict[str, float]]]:
    """Final accuracy and per-epoch records (wall time left out) of two epochs on ``data``."""
    result = train(TINY, data, 2, RESOLUTION, progress=False, **{**FAST, **overrides})
    return result.accuracy, _timeless(result.history)


def _losses(history: list[dict[str, float]]) -> list[float]:
    return [record["train_loss"] for record in history]


# --- ProxySpec ---------------------------------------------------------------------------


def test_spec_round_trip_and_validation() -> None:
    spec = ProxySpec(kind="naswot", epochs=0.5, seed=4)
    assert ProxySpec.from_dict(spec.to_dict()) == spec
    # Missing keys take their defaults, except the scale: a run written before it existed kept a fixed resolution.
    assert ProxySpec.from_dict({}) == ProxySpec(scale=None)
    assert ProxySpec.from_dict({"scale": 0.5}) == ProxySpec()
    for kwargs, field in [
        ({"scale": 0}, "--proxy-scale"),
        ({"scale": 1.5}, "--proxy-scale"),
        ({"kind": "snip"}, "--proxy"),
        ({"epochs": 0}, "--epochs"),
        ({"epochs": math.nan}, "--epochs"),
        ({"resolution": 8}, "proxy.resolution"),
        ({"threads": 0}, "proxy.threads"),
        ({"lr": -1.0}, "proxy.lr"),
        ({"device": "tpu"}, "proxy.device"),
    ]:
        with pytest.raises(InputError) as caught:
            ProxySpec(**kwargs)
        assert caught.value.field == field
    with pytest.raises(InputError, match="unknown key"):
        ProxySpec.from_dict({"epoch": 1})


# --- short training ----------------------------------------------------------------------


def test_training_is_deterministic_in_process(data: ProxyData) -> None:
    first = _run(data)
    assert first == _run(data)
    assert _losses(first[1]) != _losses(_run(data, seed=4)[1])
    assert 0.0 <= first[0] <= 1.0 and len(first[1]) == 2


def test_training_is_deterministic_across_processes(data: ProxyData) -> None:
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_proxy import TINY, FAST, RESOLUTION
from mvit_nas.data import DatasetSpec, load_dataset
from mvit_nas.proxy import train
data = load_dataset(DatasetSpec("synthetic", seed=1), RESOLUTION, train_size=64, val_size=32)
result = train(TINY, data, 2, RESOLUTION, progress=False, **FAST)
print(json.dumps([result.accuracy, [r["train_loss"] for r in result.history]]))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    accuracy, history = _run(data)
    assert json.loads(output.splitlines()[-1]) == [accuracy, _losses(history)]


def test_evaluate_proxy_train_scores_accuracy(data: ProxyData) -> None:
    spec = ProxySpec(epochs=1, resolution=RESOLUTION, batch_size=16)
    result = evaluate_proxy(TINY, spec, data)
    assert result.score == result.accuracy and 0.0 <= result.score <= 1.0
    assert result.kind == "train" and result.epochs == 1 and result.seconds > 0
    assert math.isfinite(result.train_loss)


@pytest.mark.parametrize("kind", ["train", "synflow", "naswot"])
def test_the_proxy_input_follows_the_architecture_resolution(
    kind: str, data: ProxyData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mvit_nas.proxy.evaluate as evaluate_module

    seen: list[tuple[int, ...]] = []
    build = evaluate_module._model

    def recording_model(cfg: ArchConfig, num_classes: int) -> torch.nn.Module:
        model = build(cfg, num_classes)
        model.register_forward_pre_hook(lambda _module, args: seen.append(tuple(args[0].shape[-2:])))
        return model

    monkeypatch.setattr(evaluate_module, "_model", recording_model)
    monkeypatch.setattr("mvit_nas.proxy.training._model", recording_model)
    spec = ProxySpec(kind=kind, epochs=0.5, batch_size=16, scale=0.5)
    sizes = {}
    for resolution in (64, 96):
        seen.clear()
        result = evaluate_proxy(dataclasses.replace(TINY, resolution=resolution), spec, data)
        sizes[resolution] = result.resolution
        assert set(seen) == {(result.resolution, result.resolution)}  # trained and scored at that size only
    assert sizes == {64: 32, 96: 48}
    fixed = dataclasses.replace(spec, scale=None, resolution=RESOLUTION)
    assert {evaluate_proxy(dataclasses.replace(TINY, resolution=r), fixed, data).resolution for r in (64, 96)} == {32}


def test_the_guard_covers_every_step_batch_load_validation_and_model_build(
    data: ProxyData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mvit_nas.proxy.training as training

    inside, outside, entered = [False], [], []

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        entered.append(True)
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    def watched(function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not inside[0]:
                outside.append(function.__name__)
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(type(data.train), "__getitem__", watched(type(data.train).__getitem__))
    monkeypatch.setattr(training, "_model", watched(training._model))
    monkeypatch.setattr(torch.optim.AdamW, "step", watched(torch.optim.AdamW.step))
    train(TINY, data, 1, RESOLUTION, progress=False, step_guard=guard, **FAST)
    assert outside == []  # no image loaded, no model built, no step taken outside the guard
    assert len(entered) >= len(data.train) // FAST["batch_size"] + 1


def test_huge_learning_rate_diverges(data: ProxyData) -> None:
    with pytest.raises(TrialFailed, match=r"^diverged: loss is (nan|inf) at step \d+$") as caught:
        _run(data, lr=1e6, weight_decay=0.0)
    assert caught.value.reason.startswith("diverged")


def test_nan_weight_diverges_at_first_step(data: ProxyData) -> None:
    weights = build_model(dataclasses.replace(TINY, num_classes=10)).state_dict()
    weights["head.fc.bias"][0] = math.nan
    with pytest.raises(TrialFailed, match="diverged: loss is nan at step 0"):
        _run(data, init_state_dict=to_timm(weights))


# --- zero-cost proxies -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["synflow", "naswot", "grad_norm"])
def test_zero_cost_proxies_are_finite_and_deterministic(kind: str, data: ProxyData) -> None:
    spec = ProxySpec(kind=kind, resolution=RESOLUTION, batch_size=16, seed=2)
    first, second = evaluate_proxy(TINY, spec, data), evaluate_proxy(TINY, spec, data)
    assert math.isfinite(first.score) and first.score == second.score
    assert first.kind == kind and first.accuracy is None and first.train_loss is None
    other = evaluate_proxy(TINY, dataclasses.replace(spec, seed=5), data)
    assert other.score != first.score  # the seed sets the initial weights (and the batch)


def test_naswot_prefers_the_wider_network(data: ProxyData) -> None:
    wide = dataclasses.replace(TINY, stem_channels=16, layer1=MV2StageConfig(24, 4, 1))
    spec = ProxySpec(kind="naswot", resolution=RESOLUTION, batch_size=16)
    assert evaluate_proxy(wide, spec, data).score > evaluate_proxy(TINY, spec, data).score


# --- checkpoints and resume --------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_resume_gives_the_uninterrupted_result(data: ProxyData, tmp_path: Path) -> None:
    epochs = 3
    whole = train(TINY, data, epochs, RESOLUTION, progress=False, checkpoint_dir=tmp_path / "whole", **FAST)

    folder = tmp_path / "resumed"
    calls_after_first_checkpoint = []

    @contextlib.contextmanager
    def die_in_second_epoch() -> Iterator[None]:
        if (folder / CHECKPOINT_FILE).exists():
            calls_after_first_checkpoint.append(True)
            if len(calls_after_first_checkpoint) == 2:  # the second step of epoch 2
                raise Interrupt
        yield

    with pytest.raises(Interrupt):
        train(
            TINY,
            data,
            epochs,
            RESOLUTION,
            progress=False,
            checkpoint_dir=folder,
            step_guard=die_in_second_epoch,
            **FAST,
        )
    assert torch.load(folder / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    resumed = train(TINY, data, epochs, RESOLUTION, progress=False, checkpoint_dir=folder, **FAST)

    assert _timeless(resumed.history) == _timeless(whole.history)
    assert resumed.accuracy == whole.accuracy
    final_whole = torch.load(tmp_path / "whole" / WEIGHTS_FILE, weights_only=True)
    final_resumed = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    assert all(torch.equal(final_whole[key], final_resumed[key]) for key in final_whole)
    # A finished run is not trained again.
    assert (
        train(TINY, data, epochs, RESOLUTION, progress=False, checkpoint_dir=folder, **FAST).history == resumed.history
    )


def test_checkpoint_of_another_run_is_refused(data: ProxyData, tmp_path: Path) -> None:
    train(TINY, data, 1, RESOLUTION, progress=False, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(InputError, match="different run") as caught:
        train(TINY, data, 1, RESOLUTION, progress=False, checkpoint_dir=tmp_path, batch_size=16, seed=9)
    assert caught.value.field == "--out"


# --- timm-layout initialisation ----------------------------------------------------------


def test_timm_init_loads_matching_tensors_and_resets_the_classifier(
    data: ProxyData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = build_model(dataclasses.replace(TINY, num_classes=1000)).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in to_timm(source).items()}}, tmp_path / "w.pth")
    weights = read_state_dict(tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="mvit_nas.proxy"):
        # A vanishing learning rate: the trained weights are the loaded ones.
        train(TINY, data, 1, RESOLUTION, progress=False, lr=1e-12, checkpoint_dir=tmp_path / "out",
              init_state_dict=weights, **FAST)  # fmt: skip
    assert "classifier" in caplog.text and "re-initialised" in caplog.text
    trained = torch.load(tmp_path / "out" / WEIGHTS_FILE, weights_only=True)
    assert torch.allclose(trained["stem.conv.weight"], source["stem.conv.weight"], atol=1e-6)
    assert trained["head.fc.weight"].shape == (10, source["head.fc.weight"].shape[1])


def test_init_that_matches_nothing_is_input_error(data: ProxyData) -> None:
    with pytest.raises(InputError, match="no tensor matches") as caught:
        _run(data, init_state_dict={"something.else": torch.zeros(3)})
    assert caught.value.field == "--init"


def test_read_state_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read weights") as caught:
        read_state_dict(tmp_path / "junk.pth")
    assert caught.value.field == "--init"
