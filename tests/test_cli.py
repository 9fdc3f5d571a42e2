"""`mvit-nas` as a user meets it: the profile contract, and bad input -> exit 2, one line, nothing written."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mvit_nas import preset
from mvit_nas.cli import main

PUBLISHED = {"xxs": (1_272_024, 0.418e9), "xs": (2_317_848, 1.052e9), "s": (5_578_632, 2.033e9)}
FAST = ["--backend", "eager"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mvit-nas", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_profile_json_reports_published_params_and_flops(variant: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--variant", variant, "--json", "--resolution", "64", *FAST]) == 0
    at_64 = json.loads(capsys.readouterr().out)
    assert at_64["params"] == PUBLISHED[variant][0]
    assert at_64["resolution"] == 64 and at_64["batch_size"] == 1
    assert at_64["device"] == "cpu" and at_64["backend"] == "eager"
    latency = at_64["latency_ms"]
    assert 0 < latency["p10"] <= latency["median"] <= latency["p90"] and latency["n"] >= 1
    from mvit_nas.cost import count_cost

    # The flops at 256 px are the closed form's, which equals fvcore's (tests/test_cost.py).
    flops = count_cost(preset(variant)).flops
    assert abs(flops - PUBLISHED[variant][1]) / PUBLISHED[variant][1] < 0.005
    assert at_64["flops"] == count_cost(preset(variant), 64).flops


def test_profile_prints_a_table_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--variant", "xxs", "--resolution", "64", "--batch-size", "2", *FAST]) == 0
    out = capsys.readouterr().out
    assert "1,272,024" in out and "latency" in out and "peak memory" in out


def test_profile_subprocess_onnxruntime_json() -> None:
    result = _run(["profile", "--variant", "xxs", "--json", "--resolution", "96"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "onnxruntime" and report["params"] == PUBLISHED["xxs"][0]


def test_profile_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = preset("xs").save(tmp_path / "xs.yaml")
    assert main(["profile", "--config", str(path), "--json", "--resolution", "64", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == PUBLISHED["xs"][0]


def _config_file(tmp_path: Path, change: dict[str, object] | None = None, text: str | None = None) -> str:
    path = tmp_path / "arch.yaml"
    if text is not None:
        path.write_text(text)
        return str(path)
    data = preset("xxs").to_dict()
    for key, value in (change or {}).items():
        if "." in key:
            stage, field = key.split(".")
            data[stage][field] = value
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return str(path)


BAD_PROFILE = [
    (["--variant", "m"], "--variant"),
    (["--config", "/nonexistent/arch.yaml"], "does not exist"),
    (["--variant", "xxs", "--resolution", "0"], "--resolution"),
    (["--variant", "xxs", "--resolution", "-64"], "--resolution"),
    (["--variant", "xxs", "--batch-size", "0"], "--batch-size"),
    (["--variant", "xxs", "--backend", "tensorrt"], "--backend"),
    (["--variant", "xxs", "--device", "tpu"], "--device"),
]


@pytest.mark.parametrize(("args", "named"), BAD_PROFILE)
def test_bad_profile_input_exits_2_with_one_line(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _status(["profile", *args]) == 2
    _assert_one_line(capsys.readouterr().err, named)


def _status(args: list[str]) -> int:
    """main()'s exit status, whether argparse exits or main returns."""
    try:
        return main(args)
    except SystemExit as stop:
        return int(stop.code or 0)


def _assert_one_line(err: str, named: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert named in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("change", "text", "named"),
    [
        ({"layer3.num_heads": 3}, None, "layer3.num_heads"),  # heads not dividing the dim
        ({"layer4.patch_h": 0}, None, "layer4.patch_h"),  # a zero patch
        ({"layer2.out_channels": -8}, None, "layer2.out_channels"),
        ({"stem_channels": 0}, None, "stem_channels"),
        ({"layer3.extra": 1}, None, "layer3.extra"),  # unknown key
        ({"colour": "red"}, None, "colour"),
        (None, "- a\n- list\n", "mapping"),  # YAML that is not a mapping
        (None, "key: [unclosed\n", "YAML"),
        (None, "", "mapping"),
    ],
)
def test_bad_config_file_exits_2_naming_the_field(
    tmp_path: Path, change: dict[str, object] | None, text: str | None, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    path = _config_file(tmp_path, change, text)
    assert _status(["profile", "--config", path, "--json", *FAST]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_line(captured.err, named)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "arch.yaml"])


def test_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "arch.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    result = _run(["profile", "--config", str(path)])
    assert result.returncode == 2
    _assert_one_line(result.stderr, "UTF-8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--variant", "xxs", "--device", "cuda"]) == 2
    _assert_one_line(capsys.readouterr().err, "--device")


def test_space_command_counts_and_confirms_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == {"xxs": True, "xs": True, "s": True}
    assert report["architectures"] > 10**12
    assert main(["space"]) == 0
    assert "inside the space" in capsys.readouterr().out


SEARCH_BASE = ["search", "--trials", "2", "--backend", "eager", "--proxy-scale", "0.25"]


def _space_file(tmp_path: Path, stage_change: dict[str, object]) -> str:
    from mvit_nas.config import spaces_dir

    data = yaml.safe_load((spaces_dir() / "mobilevit_v1.yaml").read_text())
    for key, value in stage_change.items():
        stage, field = key.split(".")
        data[stage][field] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--budget-ms", "-1"], "--budget-ms"),
        (["--budget-ms", "0"], "--budget-ms"),
        (["--budget-ms", "abc"], "--budget-ms"),
        (["--budget-ms", "nan"], "--budget-ms"),
        (["--budget-ms", "5", "--dataset", "cifar10:/nonexistent/cifar"], "--dataset"),
        (["--budget-ms", "5", "--dataset", "imagenet"], "--dataset"),
        (["--budget-ms", "5", "--proxy", "magic"], "--proxy"),
        (["--budget-ms", "5", "--workers", "0"], "--workers"),
    ],
)
def test_bad_search_input_exits_2_and_writes_nothing(
    tmp_path: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert _status([*SEARCH_BASE, "--run-dir", str(run_dir), *args]) == 2
    _assert_one_line(capsys.readouterr().err, named)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [({"layer3.num_heads": []}, "layer3.num_heads"), ({"layer4.depth": [2]}, "layer4.depth")],
)
def test_bad_space_file_exits_2_and_writes_nothing(
    tmp_path: Path, change: dict[str, object], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    space = _space_file(tmp_path, change)
    assert _status([*SEARCH_BASE, "--budget-ms", "5", "--space", space, "--run-dir", str(run_dir)]) == 2
    _assert_one_line(capsys.readouterr().err, named)
    assert not run_dir.exists()


def test_dataset_folder_with_the_wrong_layout_exits_2(tmp_path: Path) -> None:
    (tmp_path / "images" / "cats").mkdir(parents=True)  # no train/ and val/
    run_dir = tmp_path / "run"
    dataset = f"folder:{tmp_path / 'images'}"
    # A real process, so the exit status is the one a shell sees.
    result = _run([*SEARCH_BASE, "--budget-ms", "5", "--dataset", dataset, "--run-dir", str(run_dir)])
    assert result.returncode == 2
    _assert_one_line(result.stderr, "--dataset")
    assert not run_dir.exists()


def test_export_on_a_folder_without_a_run_exits_2(tmp_path: Path) -> None:
    result = _run(["export", "--run-dir", str(tmp_path)])
    assert result.returncode == 2
    _assert_one_line(result.stderr, "--run-dir")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_train_on_cuda_without_cuda_exits_2_naming_the_device(tmp_path: Path) -> None:
    config = preset("xxs").save(tmp_path / "xxs.yaml")
    out = tmp_path / "out"
    result = _run(["train", "--config", str(config), "--device", "cuda", "--out", str(out)])
    assert result.returncode == 2
    _assert_one_line(result.stderr, "--device")
    assert not out.exists()


def test_train_runs_on_the_threads_asked_and_reads_safetensors_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    from mvit_nas import build_model

    cfg = dataclasses.replace(preset("xxs"), resolution=64)
    config = cfg.save(tmp_path / "xxs.yaml")
    weights = tmp_path / "xxs.safetensors"
    save_file({key: value.contiguous() for key, value in build_model(cfg).state_dict().items()}, str(weights))
    tiny = tmp_path / "tiny"
    for split, count in (("train", 20), ("val", 2)):  # 36 train images after the held-out 10%: one batch
        for name in ("a", "b"):
            (tiny / split / name).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (40, 40), (index * 40, 0, 0)).save(tiny / split / name / f"{index}.png")
    args = ["train", "--config", str(config), "--dataset", f"folder:{tiny}", "--epochs", "1", "--resolution", "32"]
    status = main([*args, "--device", "cpu", "--threads", "2", "--init", str(weights), "--out", str(tmp_path / "o")])
    assert status == 0, capsys.readouterr().err
    assert "top-1 accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_search_into_a_log_prints_a_line_per_finished_trial(tmp_path: Path) -> None:
    from helpers import TINY_SPACE

    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    run_dir = tmp_path / "run"
    args = [*SEARCH_BASE, "--budget-ms", "1000", "--space", str(space), "--epochs", "0.01", "--workers", "1"]
    # stdout is a pipe here, as with nohup or a log file: no progress bar, a line per trial instead.
    result = _run([*args, "--threads", "1", "--run-dir", str(run_dir)])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert [line.split(":")[0] for line in lines] == ["trial 0", "trial 1"], result.stdout
    assert all("ms, within budget, accuracy" in line and "front" in line for line in lines), lines
