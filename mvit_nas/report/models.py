"""Model files for the front: ONNX (verified in ONNX Runtime first) and timm-layout state dicts, with weights.

Each front trial's model carries trained weights: the verification stage's
(``weights/trial_0007.verified.pt``) when there are, else the proxy-trained ones
the search saved (``weights/trial_0007.pt``, or its original's when the trial is
a duplicate). A front trial without either is exported freshly initialised only
when asked (``untrained=True``, ``--untrained``); otherwise :func:`front_weights`
refuses before anything is written. Where the weights came from is said in
``timm/README.txt``, in each ONNX file's metadata (``mvit_nas.weights``) and in
``summary.md``. :func:`prune_run_weights` drops the saved weights of trials that
are off the front for good.

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
import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from mvit_nas.atomic import atomic_path, write_bytes, write_text
from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.latency import LatencySpec, export_onnx, ort_session
from mvit_nas.model import build_model, to_timm
from mvit_nas.proxy.weights import read_state_dict
from mvit_nas.report.verification import read_records
from mvit_nas.run import WEIGHTS_DIR, TrialRecord, trial_stem, weights_path
from mvit_nas.settings import SearchSettings
from mvit_nas.validate import InputError, first_line

__all__ = [
    "MODEL_FORMATS",
    "ONNX_DIR",
    "TIMM_DIR",
    "FrontWeights",
    "ModelExport",
    "export_models",
    "front_weights",
    "prune",
    "prune_run_weights",
    "timm_variant",
]

MODEL_FORMATS = ("onnx", "timm")
ONNX_DIR = "onnx"
TIMM_DIR = "timm"
TIMM_README = "README.txt"
# The export's own per-trial files; anything else in its folders is left alone.
TRIAL_FILE = re.compile(r"trial_(\d+)\.(yaml|json|onnx|pth)")
_TIMM_FIELDS = ("stem_channels", "layer1", "layer2", "layer3", "layer4", "layer5", "last_layer_exp_factor")
WEIGHTS_METADATA = "mvit_nas.weights"  # the ONNX metadata key that says where a model's weights come from
UNTRAINED = "untrained (freshly initialised, exported with --untrained)"
PROXY_WEIGHTS = re.compile(r"trial_(\d+)\.pt")  # the search's proxy-trained files, not the verified ones


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


@dataclass(frozen=True)
class FrontWeights:
    """The weights one front model is exported with: a file (None: freshly initialised) and the label saying so."""

    path: Path | None
    label: str

    @property
    def trained(self) -> bool:
        return self.path is not None


def _epochs(epochs: float) -> str:
    return f"{epochs:g} epoch{'' if epochs == 1 else 's'}"


def _verified_training(run_dir: Path, number: int) -> str:
    """``"2.5 epochs, training seed 0, "``: the ``verify.json`` job that wrote trial ``number``'s file, or ""."""
    try:
        records = read_records(run_dir)
    except InputError:  # an unreadable verify.json does not make the weights unusable
        return ""
    for record in records:
        if record.trial == number and record.seed == 0 and record.failure is None:  # seed 0's weights are kept
            return f"{_epochs(record.epochs)}, training seed 0, "
    return ""


def _label(run_dir: Path, number: int, path: Path, verified: bool, rung: int, settings: SearchSettings) -> str:
    relative = path.relative_to(run_dir).as_posix()
    if verified:
        return f"verified ({_verified_training(run_dir, number)}{relative})"
    if rung:
        return f"successive halving, rung {rung} ({_epochs(settings.rung_epochs()[rung])}, {relative})"
    return f"proxy-trained ({_epochs(settings.proxy.epochs)}, {relative})"


def _problem(path: Path, cfg: ArchConfig) -> str | None:
    """None when ``path`` holds a state dict of ``cfg``'s model; else why it cannot be used."""
    try:
        build_model(cfg).load_state_dict(read_state_dict(path, flag="--run-dir"), strict=True)
    except InputError as error:
        return error.problem
    except RuntimeError as error:  # another architecture's keys or shapes
        return f"{path.name} does not fit the trial's config ({first_line(error, 120)})"
    return None


def _trained_weights(
    run_dir: Path, trial: FrozenTrial, cfg: ArchConfig, settings: SearchSettings
) -> FrontWeights | str:
    """The best usable weights of a front trial: verified, else the longest rung's (the proxy's is rung 0);
    or why there are none."""
    duplicate_of = TrialRecord.of(trial).duplicate_of
    numbers = [trial.number] if duplicate_of is None else [trial.number, duplicate_of]  # trained as its original
    longest_first = [(True, 0), *((False, rung) for rung in reversed(range(len(settings.rung_epochs()))))]
    problems = []
    for verified, rung in longest_first:
        for number in numbers:
            path = weights_path(run_dir, number, verified=verified, rung=rung)
            if not path.is_file():
                continue
            problem = _problem(path, cfg)
            if problem is None:
                return FrontWeights(path, _label(run_dir, number, path, verified, rung, settings))
            problems.append(problem)
    if problems:
        return problems[0]
    if settings.proxy.kind != "train":
        return f"the {settings.proxy.kind} proxy trains no model"
    return f"no {WEIGHTS_DIR}/{trial_stem(numbers[-1])}.pt"


def front_weights(
    run_dir: Path,
    front_trials: Sequence[FrozenTrial],
    configs: Mapping[int, ArchConfig],
    settings: SearchSettings,
    untrained: bool = False,
) -> dict[int, FrontWeights]:
    """The weights each front model is exported with: verified, else proxy-trained, else (``untrained``) none.

    Every file is loaded once to check that it fits its config. A front trial without
    usable weights raises :class:`InputError` naming ``--untrained`` unless
    ``untrained`` is True: call this before writing any model file, so a refused
    export writes nothing.

    Example::

        front_weights(run_dir, front(study), configs, load_settings(run_dir))[7].label
        # 'proxy-trained (0.25 epochs, weights/trial_0007.pt)'
    """
    chosen: dict[int, FrontWeights] = {}
    lacking: dict[int, str] = {}
    for trial in front_trials:
        found = _trained_weights(run_dir, trial, configs[trial.number], settings)
        if isinstance(found, str):
            lacking[trial.number] = found
            found = FrontWeights(None, UNTRAINED)
        chosen[trial.number] = found
    if lacking and not untrained:
        which = "; ".join(f"trial {number}: {problem}" for number, problem in lacking.items())
        raise InputError(
            "--untrained",
            f"{len(lacking)} front model(s) have no trained weights ({which}); "
            "pass --untrained to export them freshly initialised (nothing was written)",
        )
    return chosen


def prune_run_weights(run_dir: Path, study: optuna.Study, front_trials: Sequence[FrozenTrial]) -> list[Path]:
    """Delete ``weights/trial_*.pt`` of finished trials off the front; the files deleted.

    A finished trial off the front stays off it (a study only gains trials, and a
    trial dominated once is dominated for good), so its proxy-trained weights are
    never exported. Kept: the front's files (a duplicate's original's too), every
    ``*.verified.pt``, and the files of trials the snapshot does not show finished
    (a live search writes weights before it tells the study). Weights that cannot
    be deleted (a read-only run folder) are left.
    """
    keep = {t.number for t in front_trials}
    keep |= {d for d in (TrialRecord.of(t).duplicate_of for t in front_trials) if d is not None}
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    folder = Path(run_dir) / WEIGHTS_DIR
    deleted = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = PROXY_WEIGHTS.fullmatch(path.name)
        if match and int(match.group(1)) in finished - keep:
            try:
                path.unlink()
            except OSError:  # housekeeping only: an export must not fail for it
                continue
            deleted.append(path)
    return deleted


def _model(trial: FrozenTrial, cfg: ArchConfig, weights: FrontWeights) -> nn.Module:
    """The front trial's model in eval mode, with its weights (checked by :func:`front_weights`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.number)  # untrained exports are reproducible, and the caller's RNG is untouched
        model = build_model(cfg).eval()
    if weights.path is not None:
        model.load_state_dict(read_state_dict(weights.path, flag="--run-dir"), strict=True)
    return model


def _onnx_model(model: nn.Module, cfg: ArchConfig, height: int, width: int, scratch: Path, weights: str) -> bytes:
    """Export (``weights`` in the metadata), then prove the file runs in ONNX Runtime and matches PyTorch."""
    import onnx

    path = export_onnx(model, scratch / "model.onnx", height=height, width=width, batch_size=1)
    # Loading pulls in any external-data file the exporter wrote, so the export is one self-contained file.
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()  # whoever deploys the file can tell trained weights from random ones
    entry.key, entry.value = WEIGHTS_METADATA, weights
    data = proto.SerializeToString()
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


def _write_onnx(out: Path, trial: FrozenTrial, cfg: ArchConfig, model: nn.Module, weights: str) -> Path:
    """``onnx/trial_0007.onnx`` at the resolution the trial's latency was measured at (else the config's)."""
    latency = TrialRecord.of(trial).latency
    height, width = (latency.spec.height, latency.spec.width) if latency else (cfg.resolution, cfg.resolution)
    stem = trial_stem(trial.number)
    (out / ONNX_DIR).mkdir(parents=True, exist_ok=True)
    # The exporter may write external-data files next to its output: a private folder keeps them out of sight.
    scratch = Path(tempfile.mkdtemp(dir=out / ONNX_DIR, prefix=f".{stem}."))
    try:
        data = _onnx_model(model, cfg, height, width, scratch, weights)
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
        "Weights: 'verified' weights come from the verification stage's longer training;",
        "'proxy-trained' weights from the search's short proxy training (a fraction of an",
        "epoch to a few epochs on the proxy dataset: a starting point, not a trained model);",
        "'untrained' files (exported with --untrained) are freshly initialised and only carry",
        "the architecture.",
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
    out: Path,
    front_trials: Sequence[FrozenTrial],
    configs: Mapping[int, ArchConfig],
    formats: Collection[str],
    weights: Mapping[int, FrontWeights],
) -> ModelExport:
    """Write the ``onnx`` and/or ``timm`` files (as ``formats`` asks) of the front into ``out``.

    ``weights`` is what :func:`front_weights` chose per front trial. Files of trials
    no longer on the front are removed from those folders first.

    Example::

        chosen = front_weights(run_dir, front(study), configs, settings)
        done = export_models(run_dir, front(study), configs, ("onnx",), chosen)
        done.weights  # {7: (True, "proxy-trained (0.25 epochs, weights/trial_0007.pt)"), ...}
    """
    written: list[Path] = []
    sources: dict[int, tuple[bool, str]] = {}
    readme: list[tuple[str, str, str | None]] = []
    for folder, name in ((ONNX_DIR, "onnx"), (TIMM_DIR, "timm")):
        if name in formats:
            prune(out / folder, set(configs))
    for trial in front_trials:
        cfg, chosen = configs[trial.number], weights[trial.number]
        model = _model(trial, cfg, chosen)
        sources[trial.number] = (chosen.trained, chosen.label)
        if "onnx" in formats:
            written.append(_write_onnx(out, trial, cfg, model, chosen.label))
        if "timm" in formats:
            written.append(_write_timm(out, trial, model))
            readme.append((written[-1].name, chosen.label, timm_variant(cfg)))
    if readme:
        written.append(write_text(out / TIMM_DIR / TIMM_README, _timm_readme(readme)))
    return ModelExport(written, sources)
