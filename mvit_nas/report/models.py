"""Model files for the front: ONNX (verified in ONNX Runtime first) and timm-layout state dicts, with weights.

Each front trial's model carries the proxy-trained weights the search saved
(``weights/trial_0007.pt``, or its original's when the trial is a duplicate)
where it can; otherwise it is exported freshly initialised, and the reason is
recorded (``timm/README.txt``, ``summary.md``).

Example:

>>> import dataclasses
>>> timm_variant(preset("xs")), timm_variant(dataclasses.replace(preset("xs"), num_classes=10))
('xs', 'xs')
>>> timm_variant(dataclasses.replace(preset("xs"), stem_channels=8)) is None
True
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from optuna.trial import FrozenTrial
from torch import nn

from mvit_nas.atomic import atomic_path, write_bytes, write_text
from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.latency import LatencySpec, export_onnx, ort_session
from mvit_nas.model import build_model, to_timm
from mvit_nas.proxy.weights import read_state_dict
from mvit_nas.run import WEIGHTS_DIR, TrialRecord, trial_stem
from mvit_nas.validate import InputError, first_line

__all__ = ["MODEL_FORMATS", "ONNX_DIR", "TIMM_DIR", "ModelExport", "export_models", "prune", "timm_variant"]

MODEL_FORMATS = ("onnx", "timm")
ONNX_DIR = "onnx"
TIMM_DIR = "timm"
TIMM_README = "README.txt"
# The export's own per-trial files; anything else in its folders is left alone.
TRIAL_FILE = re.compile(r"trial_(\d+)\.(yaml|json|onnx|pth)")
_TIMM_FIELDS = ("stem_channels", "layer1", "layer2", "layer3", "layer4", "layer5", "last_layer_exp_factor")


@dataclass(frozen=True)
class ModelExport:
    """What :func:`export_models` wrote: the files, and per front trial whether its weights are trained and whence."""

    paths: list[Path]
    weights: dict[int, tuple[bool, str]]


def prune(folder: Path, keep: Collection[int]) -> None:
    """Drop this export's own files for trials no longer on the front, so a folder matches the front."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = TRIAL_FILE.fullmatch(path.name)
        if match and int(match.group(1)) not in keep:
            path.unlink(missing_ok=True)


def timm_variant(cfg: ArchConfig) -> str | None:
    """``"xxs"``/``"xs"``/``"s"`` when ``cfg`` has a published architecture, so ``timm.create_model``
    can build it (``mobilevit_<variant>``); resolution, classes and dropouts may differ."""
    for name in PRESETS:
        reference = preset(name)
        if all(getattr(cfg, field) == getattr(reference, field) for field in _TIMM_FIELDS):
            return name
    return None


def _model_with_weights(run_dir: Path, trial: FrozenTrial, cfg: ArchConfig) -> tuple[nn.Module, bool, str]:
    """(model in eval mode, trained?, where the weights come from)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.number)  # untrained exports are reproducible, and the caller's RNG is untouched
        model = build_model(cfg).eval()
    duplicate_of = TrialRecord.of(trial).duplicate_of
    candidates = [trial.number] if duplicate_of is None else [trial.number, duplicate_of]  # trained as its original
    for number in candidates:
        path = run_dir / WEIGHTS_DIR / f"{trial_stem(number)}.pt"
        if not path.is_file():
            continue
        relative = f"{WEIGHTS_DIR}/{path.name}"
        try:
            model.load_state_dict(read_state_dict(path, flag="--run-dir"), strict=True)
        # An unreadable file (InputError) or one for another architecture (RuntimeError) is not fatal:
        # the model is still exported, untrained, and the reason is said.
        except (InputError, RuntimeError) as error:
            problem = error.problem if isinstance(error, InputError) else first_line(error)
            return model, False, f"untrained (freshly initialised): {relative} could not be loaded ({problem})"
        return model, True, f"proxy-trained ({relative})"
    return model, False, "untrained (freshly initialised): the search saved no weights for this trial"


def _onnx_model(model: nn.Module, cfg: ArchConfig, height: int, width: int, scratch: Path) -> bytes:
    """Export, then prove the file runs in ONNX Runtime and matches PyTorch, before anyone sees it."""
    import onnx

    path = export_onnx(model, scratch / "model.onnx", height=height, width=width, batch_size=1)
    # Loading pulls in any external-data file the exporter wrote, so the export is one self-contained file.
    data = onnx.load(str(path)).SerializeToString()
    session = ort_session(data, LatencySpec(device="cpu", threads=1))
    (feed,) = session.get_inputs()
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    example = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
    (output, *_) = session.run(None, {feed.name: example.astype(dtype)})
    if tuple(output.shape) != (1, cfg.num_classes) or not np.all(np.isfinite(output)):
        raise RuntimeError(f"ONNX export gives output {tuple(output.shape)}, expected finite (1, {cfg.num_classes})")
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).numpy()
    tolerance = (1e-2 if dtype == np.float16 else 1e-3) * max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(output.astype(np.float32) - expected).max())
    if error > tolerance:
        raise RuntimeError(f"ONNX export differs from PyTorch by {error:.3g} (tolerance {tolerance:.3g})")
    return data


def _write_onnx(out: Path, trial: FrozenTrial, cfg: ArchConfig, model: nn.Module) -> Path:
    """``onnx/trial_0007.onnx`` at the resolution the trial's latency was measured at (else the config's)."""
    latency = TrialRecord.of(trial).latency
    height, width = (latency.spec.height, latency.spec.width) if latency else (cfg.resolution, cfg.resolution)
    stem = trial_stem(trial.number)
    (out / ONNX_DIR).mkdir(parents=True, exist_ok=True)
    # The exporter may write external-data files next to its output: a private folder keeps them out of sight.
    scratch = Path(tempfile.mkdtemp(dir=out / ONNX_DIR, prefix=f".{stem}."))
    try:
        data = _onnx_model(model, cfg, height, width, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return write_bytes(out / ONNX_DIR / f"{stem}.onnx", data)


def _write_timm(out: Path, trial: FrozenTrial, model: nn.Module) -> Path:
    path = out / TIMM_DIR / f"{trial_stem(trial.number)}.pth"
    with atomic_path(path) as tmp:
        torch.save(to_timm(model.state_dict()), tmp)
    return path


def _timm_readme(rows: Sequence[tuple[str, str, str | None]]) -> str:
    """The README of ``timm/``: (file name, weights source, timm variant or None) per file."""
    lines = [
        "State dicts in timm's mobilevit layout, one per Pareto-front point.",
        "",
        "Weights: 'proxy-trained' weights come from the search's short proxy training",
        "(a few epochs on the proxy dataset: a starting point, not a trained model);",
        "'untrained' files are freshly initialised and only carry the architecture.",
        "",
    ]
    for name, source, variant in rows:
        builder = f"timm.create_model('mobilevit_{variant}', num_classes=...)" if variant else "build_model(cfg)"
        lines.append(f"{name}: {source}; loads into {builder}")
    lines += [
        "",
        "Load:  from mvit_nas import build_model, load_config",
        "       model = build_model(load_config('configs/trial_0007.yaml'))",
        "       model.load_state_dict(torch.load('timm/trial_0007.pth'))",
        "Fine-tune from it:  mvit-nas train --config configs/trial_0007.yaml --init timm/trial_0007.pth",
    ]
    return "\n".join(lines) + "\n"


def export_models(
    run_dir: Path,
    out: Path,
    front_trials: Sequence[FrozenTrial],
    configs: Mapping[int, ArchConfig],
    formats: Collection[str],
) -> ModelExport:
    """Write the ``onnx`` and/or ``timm`` files (as ``formats`` asks) of the front into ``out``.

    Files of trials no longer on the front are removed from those folders first.

    Example::

        done = export_models(run_dir, run_dir, front(study), configs, formats=("onnx",))
        done.weights  # {7: (True, "proxy-trained (weights/trial_0007.pt)"), ...}
    """
    written: list[Path] = []
    weights: dict[int, tuple[bool, str]] = {}
    readme: list[tuple[str, str, str | None]] = []
    for folder, name in ((ONNX_DIR, "onnx"), (TIMM_DIR, "timm")):
        if name in formats:
            prune(out / folder, set(configs))
    for trial in front_trials:
        cfg = configs[trial.number]
        model, is_trained, source = _model_with_weights(run_dir, trial, cfg)
        weights[trial.number] = (is_trained, source)
        if "onnx" in formats:
            written.append(_write_onnx(out, trial, cfg, model))
        if "timm" in formats:
            written.append(_write_timm(out, trial, model))
            readme.append((written[-1].name, source, timm_variant(cfg)))
    if readme:
        written.append(write_text(out / TIMM_DIR / TIMM_README, _timm_readme(readme)))
    return ModelExport(written, weights)
