"""Exports of a run folder: tables, the front's configs, a plot, a summary, ONNX models, timm weights.

``export_run(run_dir)`` reads the run's Optuna study once (read-only) and writes,
into ``out_dir`` (the run folder by default):

- ``trials.csv``: one row per trial: number, state, seed, the config (as JSON
  and flattened into ``config.<field>`` columns), params, flops, latency
  statistics and the spec they were measured under, accuracy, feasibility,
  duration, failure reason, duplicate/retry links;
- ``pareto.csv``: the rows of the feasible front, fastest first;
- ``configs/trial_0007.yaml`` (or ``.json``): one config per front point,
  loadable by :func:`mvit_nas.load_config` and ``mvit-nas profile --config``;
- ``pareto.png``: accuracy against latency for every trial, the front, the
  seeds and the budget;
- ``summary.md``: settings, counts, hypervolume, the front, the front against
  the seeds;
- with ``onnx``: ``onnx/trial_0007.onnx``, each verified in ONNX Runtime first;
- with ``timm``: ``timm/trial_0007.pth``, state dicts in timm's layout, plus a
  ``README.txt`` saying whether the weights are trained.

Every file is written to a temporary file in its folder and renamed into place,
so an interrupted export leaves the previous file or the new one, never half a
file. The study and ``run.yaml`` are only read.

Example::

    from mvit_nas.export import export_run
    result = export_run("runs/demo", formats=("yaml", "onnx"))
    print(result.front, [str(p) for p in result.paths])
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy.exc
import yaml
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.errors import InputError, writable_folder
from mvit_nas.pareto import front, hypervolume, is_feasible, seed_dominance, seed_trials

__all__ = ["FORMATS", "ExportResult", "export_run", "timm_variant", "trial_stem", "trials_frame"]

FORMATS = ("yaml", "json", "onnx", "timm")
CONFIG_FORMATS = ("yaml", "json")
TRIALS_CSV = "trials.csv"
PARETO_CSV = "pareto.csv"
PLOT_FILE = "pareto.png"
SUMMARY_FILE = "summary.md"
CONFIGS_DIR = "configs"
ONNX_DIR = "onnx"
TIMM_DIR = "timm"
WEIGHTS_DIR = "weights"  # where a search may leave proxy-trained weights: weights/trial_0007.pt
SPEC_FIELDS = ("device", "backend", "batch_size", "resolution", "dtype", "threads")
LATENCY_STATS = ("median", "p10", "p90", "mean")

_TRIAL_FILE = re.compile(r"trial_(\d+)\.(yaml|json|onnx|pth)")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    ``weights_trained`` is None when no model was exported (neither ``onnx`` nor
    ``timm`` asked for, or an empty front), True when every exported model
    carries the search's proxy-trained weights, False when at least one is
    freshly initialised; ``weights`` says which, per front trial.
    """

    run_dir: Path
    out_dir: Path
    paths: tuple[Path, ...]
    front: tuple[int, ...]
    hypervolume: float
    weights_trained: bool | None
    weights: dict[int, str]

    @property
    def front_size(self) -> int:
        return len(self.front)


# --- files -----------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the rename must not land before the data does
        os.chmod(tmp, 0o644)  # mkstemp makes files private; exports are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> Path:
    with _atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _prune(folder: Path, keep: set[int]) -> None:
    """Drop this export's own files for trials no longer on the front, so a folder matches the front."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _TRIAL_FILE.fullmatch(path.name)
        if match and int(match.group(1)) not in keep:
            path.unlink(missing_ok=True)


def trial_stem(number: int) -> str:
    """File stem of a trial's exports (``trial_0007``); the search's weights use the same."""
    return f"trial_{number:04d}"


# --- reading the run -------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    study: optuna.Study  # an in-memory snapshot: every table, plot and summary sees the same trials
    settings: dict[str, Any]
    budget_ms: float


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError("--run-dir", f"{path} is unreadable ({type(error).__name__})") from None
    budget = settings.get("budget_ms") if isinstance(settings, dict) else None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise InputError("--run-dir", f"{path} is not an mvit-nas run settings file (no positive budget_ms)")
    return settings


def _open_study(storage_file: Path) -> optuna.Study:
    from mvit_nas.search import STUDY_NAME

    # Read-only, so an export cannot change the study whatever Optuna does on load. A leftover
    # rollback journal (a search killed mid-write) needs a writer to roll it back; SQLite does
    # that on a normal open, and it only discards the unfinished write.
    hot_journal = storage_file.with_name(storage_file.name + "-journal").exists()
    quoted = urllib.parse.quote(str(storage_file.resolve()))
    url = f"sqlite:///{storage_file.resolve()}" if hot_journal else f"sqlite:///file:{quoted}?mode=ro&uri=true"
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=url)
        trials = study.get_trials(deepcopy=False)
    except KeyError:
        raise InputError("--run-dir", f"{storage_file} holds no study named {STUDY_NAME!r}") from None
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as error:
        problem = str(getattr(error, "orig", None) or type(error).__name__)
        raise InputError("--run-dir", f"{storage_file} is corrupted or not an Optuna study ({problem})") from None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created in memory" is noise here
    try:
        snapshot = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    snapshot.add_trials(sorted(trials, key=lambda t: t.number))
    # Numbers are the contract (file names, duplicate_of); a snapshot that renumbered would be wrong.
    if [t.number for t in snapshot.get_trials(deepcopy=False)] != sorted(t.number for t in trials):
        raise RuntimeError(f"{storage_file}: trial numbers are not contiguous; cannot snapshot the study")
    return snapshot


def _open_run(run_dir: Path) -> _Run:
    from mvit_nas.search import SETTINGS_FILE, STORAGE_FILE

    storage_file, settings_file = run_dir / STORAGE_FILE, run_dir / SETTINGS_FILE
    if not storage_file.is_file() or not settings_file.is_file():
        raise InputError("--run-dir", f"{run_dir} holds no mvit-nas run (no {STORAGE_FILE} and {SETTINGS_FILE})")
    settings = _read_settings(settings_file)
    return _Run(_open_study(storage_file), settings, float(settings["budget_ms"]))


# --- trials.csv --------------------------------------------------------------------------


def _resolution(latency: dict[str, Any]) -> Any:
    height, width = latency.get("height"), latency.get("width")
    if height is None or width is None or height == width:
        return height if height is not None else width
    return f"{height}x{width}"


def _trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    latency = attrs.get("latency") or {}
    config = attrs.get("config")
    feasible = attrs.get("feasible")
    if feasible is None and trial.constraints:
        feasible = is_feasible(trial)
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "seed": attrs.get("seed"),
        "config_key": attrs.get("config_key"),
        "config": json.dumps(config, sort_keys=False) if config is not None else None,
        "params": attrs.get("params"),
        "flops": attrs.get("flops"),
    }
    for stat in LATENCY_STATS:
        row[f"latency_{stat}_ms"] = latency.get(stat)
    row["latency_n"] = latency.get("n")
    row["latency_discarded"] = latency.get("discarded")
    row.update({name: latency.get(name) for name in SPEC_FIELDS})
    row["resolution"] = _resolution(latency)  # the spec records height and width
    row.update(
        {
            "latency_over_budget_ms": trial.constraints.get("latency_over_budget_ms"),
            "accuracy": attrs.get("accuracy"),  # None when over budget: never trained, not "0 % accurate"
            "feasible": feasible,
            "duration_s": attrs.get("duration_s"),
            "failure": attrs.get("failure"),
            "duplicate_of": attrs.get("duplicate_of"),
            "retry_of": attrs.get("retry_of"),
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        }
    )
    return row


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of an mvit-nas study (the content of ``trials.csv``), by trial number.

    Each config field becomes a ``config.<field>`` column (``config.layer3.num_heads``)
    next to the whole config as JSON; integer columns stay integers where values
    are missing (pandas nullable dtypes).

    Example::

        frame = trials_frame(study)
        frame[frame["feasible"].fillna(False)].sort_values("latency_median_ms")
    """
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    base = pd.DataFrame([_trial_row(t) for t in trials], columns=_trial_row_columns())
    configs = [t.user_attrs.get("config") or {} for t in trials]
    knobs = pd.json_normalize(configs, sep=".").add_prefix("config.") if trials else pd.DataFrame()
    at = base.columns.get_loc("config") + 1
    frame = pd.concat([base.iloc[:, :at], knobs, base.iloc[:, at:]], axis=1)
    return frame.convert_dtypes()


def _trial_row_columns() -> list[str]:
    columns = ["number", "state", "seed", "config_key", "config", "params", "flops"]
    columns += [f"latency_{stat}_ms" for stat in LATENCY_STATS] + ["latency_n", "latency_discarded", *SPEC_FIELDS]
    columns += ["latency_over_budget_ms", "accuracy", "feasible", "duration_s", "failure"]
    return [*columns, "duplicate_of", "retry_of", "datetime_start", "datetime_complete"]


# --- models ------------------------------------------------------------------------------


def _config_of(trial: FrozenTrial) -> ArchConfig:
    if "config" not in trial.user_attrs:
        raise RuntimeError(f"trial {trial.number} is on the front but has no 'config' attribute")
    return ArchConfig.from_dict(trial.user_attrs["config"])


def timm_variant(cfg: ArchConfig) -> str | None:
    """``"xxs"``/``"xs"``/``"s"`` when ``cfg`` has a published architecture, so ``timm.create_model``
    can build it (``mobilevit_<variant>``); resolution, classes and dropouts may differ."""
    fields = ("stem_channels", "layer1", "layer2", "layer3", "layer4", "layer5", "last_layer_exp_factor")
    for name in PRESETS:
        reference = preset(name)
        if all(getattr(cfg, field) == getattr(reference, field) for field in fields):
            return name
    return None


def _model_with_weights(run_dir: Path, trial: FrozenTrial, cfg: ArchConfig) -> tuple[Any, bool, str]:
    """(model in eval mode, trained?, where the weights come from)."""
    import torch

    from mvit_nas.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.number)  # untrained exports are reproducible, and the caller's RNG is untouched
        model = build_model(cfg).eval()
    candidates = [trial.number]
    if isinstance(trial.user_attrs.get("duplicate_of"), int):
        candidates.append(trial.user_attrs["duplicate_of"])  # a duplicate was trained as its original
    for number in candidates:
        path = run_dir / WEIGHTS_DIR / f"{trial_stem(number)}.pt"
        if not path.is_file():
            continue
        relative = f"{WEIGHTS_DIR}/{path.name}"
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            # A bare state dict (proxy.train's model.pt), or a checkpoint that holds one.
            nested = [
                data[k] for k in ("state_dict", "model") if isinstance(data, dict) and isinstance(data.get(k), dict)
            ]
            state = nested[0] if nested else data
            model.load_state_dict(state, strict=True)
        except Exception as error:
            problem = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            return model, False, f"untrained (freshly initialised): {relative} could not be loaded ({problem})"
        return model, True, f"proxy-trained ({relative})"
    return model, False, "untrained (freshly initialised): the search saved no weights for this trial"


def _torch_export_onnx(model: Any, path: Path, height: int, width: int, batch_size: int = 1) -> None:
    import warnings

    import torch

    example = torch.randn(batch_size, 3, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's concern
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)


def _export_onnx_file(model: Any, path: Path, height: int, width: int) -> None:
    try:
        from mvit_nas.latency import export_onnx
    except ImportError:
        export_onnx = _torch_export_onnx
    export_onnx(model, path, height, width, batch_size=1)


def _onnx_model(model: Any, cfg: ArchConfig, height: int, width: int, scratch: Path) -> bytes:
    """Export, then prove the file runs in ONNX Runtime and matches PyTorch, before anyone sees it."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    path = scratch / "model.onnx"
    _export_onnx_file(model, path, height, width)
    # Loading pulls in any external-data file the exporter wrote, so the export is one self-contained file.
    data = onnx.load(str(path)).SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
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


def _timm_readme(rows: list[tuple[str, str, str | None]]) -> str:
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


# --- the plot ----------------------------------------------------------------------------


def _spec_text(study: optuna.Study, settings: dict[str, Any]) -> str:
    """The latency spec every trial was measured under, from the trials themselves (run.yaml may say 'auto')."""
    measured = [t.user_attrs["latency"] for t in study.get_trials(deepcopy=False) if t.user_attrs.get("latency")]
    configured = settings.get("latency") or {}

    def value(name: str) -> str:
        seen = {str(_resolution(m) if name == "resolution" else m.get(name)) for m in measured} - {"None"}
        if len(seen) > 1:
            return "per trial" if name == "resolution" else "mixed"
        if seen:
            return seen.pop()
        return str(configured.get(name, "?"))

    resolution = value("resolution")
    resolution = resolution if resolution in ("per trial", "?") else f"{resolution} px"
    return (
        f"{value('device')}, {value('backend')}, batch {value('batch_size')}, {value('dtype')}, "
        f"{value('threads')} threads, resolution {resolution}"
    )


def _accuracy_scale(settings: dict[str, Any]) -> tuple[float, str]:
    """(factor, unit): the ``train`` proxy's top-1 fraction is shown in percent; a zero-cost score as it is."""
    proxy = settings.get("proxy") or {}
    kind = proxy.get("kind", "train") if isinstance(proxy, dict) else "train"
    return (100.0, "%") if kind == "train" else (1.0, f"{kind} score")


def _plot(run: _Run, path: Path, front_trials: Sequence[FrozenTrial]) -> Path:
    # The object-oriented API with the Agg canvas draws without pyplot's global state or a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    study = run.study
    scale, unit = _accuracy_scale(run.settings)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    front_numbers = {t.number for t in front_trials}
    feasible = [t for t in complete if is_feasible(t) and t.number not in front_numbers]
    infeasible = [t for t in complete if not is_feasible(t)]

    figure = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    if infeasible:
        ax.scatter(
            [t.values[1] for t in infeasible],
            [0.0] * len(infeasible),
            marker="x",
            color="0.65",
            label="over budget (not trained)",
        )
    if feasible:
        ax.scatter(
            [t.values[1] for t in feasible],
            [t.values[0] * scale for t in feasible],
            color="tab:blue",
            alpha=0.6,
            label="feasible",
        )
    if front_trials:
        latencies = [t.values[1] for t in front_trials]
        accuracies = [t.values[0] * scale for t in front_trials]
        # Best accuracy reachable within each latency: a step up at every front point, held to the budget.
        ax.step([*latencies, run.budget_ms], [*accuracies, accuracies[-1]], where="post", color="tab:red", lw=1.5)
        ax.scatter(latencies, accuracies, color="tab:red", zorder=3, label=f"Pareto front ({len(front_trials)})")
        for trial, x, y in zip(front_trials, latencies, accuracies, strict=True):
            ax.annotate(f"#{trial.number}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for name, seed in seed_trials(study).items():
        feasible_seed = is_feasible(seed)
        y = seed.values[0] * scale if feasible_seed else 0.0
        colour = "gold" if feasible_seed else "0.8"
        ax.scatter([seed.values[1]], [y], marker="*", s=180, color=colour, edgecolor="black", zorder=4)
        ax.annotate(name, (seed.values[1], y), textcoords="offset points", xytext=(6, 6), fontweight="bold")
    ax.axvline(run.budget_ms, color="black", linestyle="--", lw=1, label=f"budget {run.budget_ms:g} ms")
    ax.scatter([], [], marker="*", s=120, color="gold", edgecolor="black", label="seeds (xxs / xs / s)")
    ax.set_xlabel("latency, median (ms)")
    ax.set_ylabel(f"proxy accuracy ({unit})")
    ax.set_title(f"Accuracy vs latency — {_spec_text(study, run.settings)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    with _atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


# --- summary.md --------------------------------------------------------------------------


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    cells = frame.astype(object).where(frame.notna(), "—").astype(str)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False, name=None)]
    return "\n".join(lines)


def _empty_front_reason(study: optuna.Study, budget_ms: float) -> str:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not trials:
        return "the study has no trials yet"
    if not complete:
        failed = sum(t.state == TrialState.FAIL for t in trials)
        pending = len(trials) - failed
        return f"no trial has completed ({failed} failed, {pending} waiting or running)"
    fastest = min(complete, key=lambda t: t.values[1])
    return (
        f"all {len(complete)} completed trials are over the {budget_ms:g} ms budget; "
        f"the fastest, trial {fastest.number}, measured {fastest.values[1]:.3g} ms"
    )


def _fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _versus_cell(comparison: dict[str, Any] | None, unit: str) -> str:
    if comparison is None:
        return "—"
    if comparison.get("same_trial"):
        return "is this seed"
    saved_ms, saved_pct = comparison["latency_saved_ms"], comparison["latency_saved_pct"]
    pct = f" ({_fmt(abs(saved_pct), 0)} %)" if saved_pct is not None else ""
    saved = f"{_fmt(abs(saved_ms), 2)} ms{pct} {'faster' if saved_ms >= 0 else 'slower'}"
    if comparison["accuracy_gain"] is None:
        return f"**dominates** (seed over budget, not trained); {saved}"
    gain = f"{_fmt(comparison['accuracy_gain'], 1, sign=True)} {unit}"
    verdict = "**dominates**" if comparison["dominates"] else "does not dominate"
    return f"{verdict}: {gain}, {saved}"


def _summary(
    run: _Run,
    run_dir: Path,
    front_trials: list[FrozenTrial],
    table: pd.DataFrame,
    files: dict[int, list[str]],
    weights: dict[int, str],
) -> str:
    from mvit_nas.search import INTERRUPTED, is_finished

    study, settings = run.study, run.settings
    scale, unit = _accuracy_scale(settings)
    points = "points" if unit == "%" else unit
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    interrupted = sum(t.user_attrs.get("failure") == INTERRUPTED for t in failed)
    space = settings.get("space")
    space_name = "default (bundled)" if space is None else str(space.get("name", "custom"))
    sampler = f"{settings.get('sampler', '?')}, seed {settings.get('seed', '?')}"
    proxy = json.dumps(settings.get("proxy"), sort_keys=True)
    lines = [
        f"# mvit-nas run `{run_dir.name}`",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| budget | {run.budget_ms:g} ms (median latency) |",
        f"| latency spec | {_spec_text(study, settings)} |",
        f"| proxy | `{proxy}` |",
        f"| dataset | {settings.get('dataset', '?')} |",
        f"| sampler | {sampler} |",
        f"| space | {space_name} |",
        "",
        "## Trials",
        "",
        "| trials | finished | completed | feasible | over budget | failed | interrupted | duplicates | pending |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {len(trials)} | {sum(is_finished(t) for t in trials)} | {len(complete)} "
        f"| {sum(is_feasible(t) for t in complete)} | {sum(not is_feasible(t) for t in complete)} "
        f"| {len(failed) - interrupted} | {interrupted} "
        f"| {sum('duplicate_of' in t.user_attrs for t in trials)} "
        f"| {sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)} |",
        "",
        "## Pareto front",
        "",
    ]
    volume = hypervolume([t.values for t in front_trials], (0.0, run.budget_ms))
    if not front_trials:
        lines += [f"The front is empty: {_empty_front_reason(study, run.budget_ms)}.", ""]
    else:
        lines += [
            f"Hypervolume: **{volume:.4g}** (accuracy x ms) against the reference (accuracy 0, latency "
            f"{run.budget_ms:g} ms); divided by the budget, **{volume / run.budget_ms * scale:.3g} {unit}**: "
            "the best accuracy reachable within a latency limit, averaged over limits from 0 to the budget.",
            "",
        ]
        rows = table.set_index("number").loc[[t.number for t in front_trials]]
        shown = pd.DataFrame(
            {
                "trial": rows.index,
                f"accuracy ({unit})": [_fmt(t.values[0] * scale, 2) for t in front_trials],
                "latency (ms)": [_fmt(t.values[1], 3) for t in front_trials],
                "p10 to p90 (ms)": [
                    f"{_fmt(p10, 3)} to {_fmt(p90, 3)}"
                    for p10, p90 in zip(rows["latency_p10_ms"], rows["latency_p90_ms"], strict=True)
                ],
                "params (M)": [_fmt(p / 1e6, 3) if pd.notna(p) else "—" for p in rows["params"]],
                "MMACs": [_fmt(f / 1e6, 1) if pd.notna(f) else "—" for f in rows["flops"]],
                "resolution": list(rows["resolution"]),
                "seed": list(rows["seed"]),
                "files": [", ".join(files.get(t.number, [])) for t in front_trials],
            }
        )
        lines += [_markdown_table(shown), ""]
        if weights:
            lines += ["Model weights in the ONNX / timm exports:", ""]
            lines += [f"- trial {number}: {source}" for number, source in weights.items()]
            lines.append("")
    lines += ["## Front against the seeds", ""]
    seeds = seed_trials(study)
    seed_rows = []
    for name in ("xxs", "xs", "s"):
        tagged = [t for t in trials if t.user_attrs.get("seed") == name]
        trial = seeds.get(name) or (tagged[-1] if tagged else None)
        if trial is None:
            seed_rows.append({"seed": name, "trial": "—", "state": "not run"})
            continue
        done = trial.state == TrialState.COMPLETE
        feasible = done and is_feasible(trial)
        accuracy = _fmt(trial.values[0] * scale, 2) if feasible else ("not trained" if done else "—")
        seed_rows.append(
            {
                "seed": name,
                "trial": trial.number,
                "state": trial.state.name
                + (f" ({trial.user_attrs['failure']})" if trial.user_attrs.get("failure") else ""),
                "feasible": ("yes" if feasible else "no, over budget") if done else "—",
                f"accuracy ({unit})": accuracy,
                "latency (ms)": _fmt(trial.values[1], 3) if done else "—",
            }
        )
    lines += [_markdown_table(pd.DataFrame(seed_rows)), ""]
    dominance = seed_dominance(study, accuracy_scale=scale)
    if not dominance:
        lines.append("No front point to compare with the seeds.")
    elif not seeds:
        lines.append("No seed trial completed, so there is nothing to compare the front with.")
    else:
        comparison = pd.DataFrame(
            [
                {"trial": row["trial"], **{name: _versus_cell(row["versus"].get(name), points) for name in seeds}}
                for row in dominance
            ]
        )
        lines += [
            "Each cell: whether the front point dominates the seed (at least as accurate and as fast, better "
            f"in one; any within-budget point dominates an over-budget seed), the accuracy gain in {points} "
            "and the latency saved.",
            "",
            _markdown_table(comparison),
        ]
        dominated = {name for row in dominance for name in row["dominates"]}
        on_front = {t.number for t in front_trials}
        for name, seed in seeds.items():
            if name in dominated:
                continue
            if seed.number in on_front:
                lines += ["", f"{name} (trial {seed.number}) is itself on the front: no trial beats it on both."]
            elif is_feasible(seed):
                lines += ["", f"No front point dominates {name}: a front point ties with it."]
    return "\n".join(lines) + "\n"


# --- the entry point ---------------------------------------------------------------------


def _check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    chosen = (formats,) if isinstance(formats, str) else tuple(formats)
    for name in chosen:
        if name not in FORMATS:
            raise InputError("--format", f"must be one of {', '.join(FORMATS)}, got {name!r}")
    return chosen


def export_run(
    run_dir: str | Path, out_dir: str | Path | None = None, formats: str | Iterable[str] = ("yaml",)
) -> ExportResult:
    """Write the exports of the run in ``run_dir`` into ``out_dir`` (default: the run folder).

    Tables, plot, summary and one config file per front point are always
    written (configs as ``.yaml`` unless ``json`` is asked for); ``onnx`` and
    ``timm`` add model files for the front. A folder without a run raises
    :class:`InputError` naming ``--run-dir``, an unknown format one naming
    ``--format``; a run without a feasible trial still gets its tables and a
    summary that says why the front is empty.

    Example::

        result = export_run("runs/demo", formats=("json", "timm"))
        result.front_size, result.weights_trained  # e.g. (4, False): timm files are untrained
    """
    chosen = _check_formats(formats)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("--run-dir", f"{run_dir} is not a folder")
    run = _open_run(run_dir)
    out = run_dir if out_dir is None else Path(out_dir)
    writable_folder(out, "--out")

    study = run.study
    front_trials = front(study)
    numbers = [t.number for t in front_trials]
    keep = set(numbers)
    table = trials_frame(study)
    written: list[Path] = [_write_text(out / TRIALS_CSV, table.to_csv(index=False))]

    files: dict[int, list[str]] = {number: [] for number in numbers}
    config_formats = [name for name in chosen if name in CONFIG_FORMATS] or ["yaml"]
    configs = {t.number: _config_of(t) for t in front_trials}
    _prune(out / CONFIGS_DIR, keep)
    for number, cfg in configs.items():
        for name in config_formats:
            text = cfg.to_yaml() if name == "yaml" else cfg.to_json()
            written.append(_write_text(out / CONFIGS_DIR / f"{trial_stem(number)}.{name}", text))
            files[number].append(f"{CONFIGS_DIR}/{trial_stem(number)}.{name}")

    dominance = {row["trial"]: ";".join(row["dominates"]) for row in seed_dominance(study)}
    pareto = table.set_index("number").loc[numbers].reset_index()
    pareto.insert(1, "config_file", [files[n][0] if files[n] else None for n in numbers])
    pareto.insert(2, "dominates_seeds", [dominance.get(n, "") for n in numbers])
    written.append(_write_text(out / PARETO_CSV, pareto.to_csv(index=False)))

    weights: dict[int, tuple[bool, str]] = {}
    if ("onnx" in chosen or "timm" in chosen) and front_trials:
        models, weights = _export_models(run_dir, out, front_trials, configs, chosen)
        written += models
        for path in models:
            match = _TRIAL_FILE.fullmatch(path.name)
            if match:
                files[int(match.group(1))].append(path.relative_to(out).as_posix())
    sources = {number: source for number, (_, source) in weights.items()}

    written.append(_plot(run, out / PLOT_FILE, front_trials))
    written.append(_write_text(out / SUMMARY_FILE, _summary(run, run_dir, front_trials, table, files, sources)))
    return ExportResult(
        run_dir=run_dir,
        out_dir=out,
        paths=tuple(written),
        front=tuple(numbers),
        hypervolume=hypervolume([t.values for t in front_trials], (0.0, run.budget_ms)),
        weights_trained=all(trained for trained, _ in weights.values()) if weights else None,
        weights=sources,
    )


def _export_models(
    run_dir: Path,
    out: Path,
    front_trials: list[FrozenTrial],
    configs: dict[int, ArchConfig],
    chosen: tuple[str, ...],
) -> tuple[list[Path], dict[int, tuple[bool, str]]]:
    """ONNX and/or timm files for the front: (paths written, trial -> (trained?, weights source))."""
    import torch

    from mvit_nas.model import to_timm

    written: list[Path] = []
    weights: dict[int, tuple[bool, str]] = {}
    readme: list[tuple[str, str, str | None]] = []
    keep = set(configs)
    for folder, name in ((ONNX_DIR, "onnx"), (TIMM_DIR, "timm")):
        if name in chosen:
            _prune(out / folder, keep)
    for trial in front_trials:
        cfg = configs[trial.number]
        model, is_trained, source = _model_with_weights(run_dir, trial, cfg)
        weights[trial.number] = (is_trained, source)
        stem = trial_stem(trial.number)
        if "onnx" in chosen:
            latency = trial.user_attrs.get("latency") or {}
            height = int(latency.get("height") or cfg.resolution)
            width = int(latency.get("width") or height)
            (out / ONNX_DIR).mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(dir=out / ONNX_DIR, prefix=f".{stem}."))
            try:
                data = _onnx_model(model, cfg, height, width, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            written.append(_write_bytes(out / ONNX_DIR / f"{stem}.onnx", data))
        if "timm" in chosen:
            path = out / TIMM_DIR / f"{stem}.pth"
            with _atomic_path(path) as tmp:
                torch.save(to_timm(model.state_dict()), tmp)
            written.append(path)
            readme.append((path.name, source, timm_variant(cfg)))
    if readme:
        written.append(_write_text(out / TIMM_DIR / "README.txt", _timm_readme(readme)))
    return written, weights
