"""Exports of a run folder: tables, the front's configs, a plot, a summary, ONNX models, timm weights.

``export_run(run_dir)`` reads the run's Optuna study once (a read-only snapshot,
:func:`mvit_nas.run.read_study`) and writes, into ``out_dir`` (the run folder by
default):

- ``trials.csv``: one row per trial: number, state, seed, the config (as JSON
  and flattened into ``config.<field>`` columns), params, flops, latency
  statistics and the spec they were measured under, accuracy, feasibility,
  duration, failure reason, duplicate/retry links;
- ``pareto.csv``: the rows of the feasible front, fastest first, each with the
  budget-fitted seeds it dominates (``dominates_seeds``: ``xxs@160;xs@96``);
- ``configs/trial_0007.yaml`` (or ``.json``): one config per front point,
  loadable by :func:`mvit_nas.load_config` and ``mvit-nas profile --config``;
- ``pareto.png``: accuracy against latency for every trial, the front, the
  seeds and the budget;
- ``summary.md``: settings, counts, hypervolume, the front, the front against
  the seeds, and the verification when the run has one (``verify.json``);
- ``verify.png`` (a verified run): proxy against verified accuracy per model;
- with ``onnx``: ``onnx/trial_0007.onnx``, each verified in ONNX Runtime first;
- with ``timm``: ``timm/trial_0007.pth``, state dicts in timm's layout, plus a
  ``README.txt`` saying where the weights come from.

Models carry trained weights: the verification stage's
(``weights/trial_0007.verified.pt``) if any, else the search's proxy-trained ones
(``weights/trial_0007.pt``); the ONNX metadata key ``mvit_nas.weights`` says which.
A front point without either is exported freshly initialised only with
``untrained=True`` (``--untrained``); otherwise the export refuses before writing
anything. Each export also prunes the run's weights to the front: the
``weights/trial_*.pt`` of finished trials off the front are deleted (they can
never return to it).

Every file is written atomically (:mod:`mvit_nas.atomic`), so an interrupted
export leaves the previous file or the new one, never half a file. The study
and ``run.yaml`` are only read.

Example::

    from mvit_nas.report import export_run
    result = export_run("runs/demo", formats=("yaml", "onnx"))
    print(result.front, [str(p) for p in result.paths])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from mvit_nas.atomic import write_text
from mvit_nas.config import ArchConfig
from mvit_nas.report.front import fitted_seed_trials, front, hypervolume, rung_entries, seed_dominance, seed_trials
from mvit_nas.report.models import (
    MODEL_FORMATS,
    TRIAL_FILE,
    export_models,
    front_weights,
    prune,
    prune_run_weights,
    timm_variant,
)
from mvit_nas.report.plot import plot_front, plot_verification
from mvit_nas.report.summary import summary_markdown
from mvit_nas.report.tables import pareto_frame, trials_frame
from mvit_nas.report.verification import read_report
from mvit_nas.run import TrialRecord, load_settings, read_study, require_run, trial_stem
from mvit_nas.validate import InputError, writable_folder

__all__ = [
    "FORMATS",
    "ExportResult",
    "export_run",
    "fitted_seed_trials",
    "front",
    "hypervolume",
    "rung_entries",
    "seed_dominance",
    "seed_trials",
    "timm_variant",
    "trials_frame",
]

CONFIG_FORMATS = ("yaml", "json")
FORMATS = (*CONFIG_FORMATS, *MODEL_FORMATS)
TRIALS_CSV = "trials.csv"
PARETO_CSV = "pareto.csv"
PLOT_FILE = "pareto.png"
VERIFY_PLOT_FILE = "verify.png"
SUMMARY_FILE = "summary.md"
CONFIGS_DIR = "configs"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    ``weights_trained`` is None when no model was exported (neither ``onnx`` nor
    ``timm`` asked for, or an empty front), True when every exported model
    carries trained weights (verified or proxy-trained), False when at least one
    is freshly initialised (``untrained=True``); ``weights`` says which, per front
    trial. ``pruned`` are the weight files of off-front trials this export deleted.
    """

    run_dir: Path
    out_dir: Path
    paths: tuple[Path, ...]
    front: tuple[int, ...]
    hypervolume: float
    weights_trained: bool | None
    weights: dict[int, str]
    pruned: tuple[Path, ...] = ()

    @property
    def front_size(self) -> int:
        return len(self.front)


def _check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    chosen = (formats,) if isinstance(formats, str) else tuple(formats)
    for name in chosen:
        if name not in FORMATS:
            raise InputError("--format", f"must be one of {', '.join(FORMATS)}, got {name!r}")
    return chosen


def _config_of(trial: FrozenTrial) -> ArchConfig:
    config = TrialRecord.of(trial).config
    if config is None:
        raise RuntimeError(f"trial {trial.number} is on the front but has no 'config' attribute")
    return config


def _write_configs(out: Path, configs: dict[int, ArchConfig], formats: Sequence[str]) -> dict[int, list[str]]:
    """``configs/trial_0007.yaml`` (and/or ``.json``) per front trial: the files written, relative to ``out``."""
    prune(out / CONFIGS_DIR, set(configs))
    files: dict[int, list[str]] = {}
    for number, cfg in configs.items():
        files[number] = []
        for name in formats:
            relative = f"{CONFIGS_DIR}/{trial_stem(number)}.{name}"
            write_text(out / relative, cfg.to_yaml() if name == "yaml" else cfg.to_json())
            files[number].append(relative)
    return files


def _write_pareto(out: Path, study: optuna.Study, table: pd.DataFrame, files: dict[int, list[str]]) -> Path:
    numbers = list(files)
    dominates = {row["trial"]: ";".join(row["dominates"]) for row in seed_dominance(study)}
    config_files = {number: paths[0] if paths else None for number, paths in files.items()}
    return write_text(out / PARETO_CSV, pareto_frame(table, numbers, config_files, dominates).to_csv(index=False))


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    formats: str | Iterable[str] = ("yaml",),
    untrained: bool = False,
) -> ExportResult:
    """Write the exports of the run in ``run_dir`` into ``out_dir`` (default: the run folder).

    Tables, plot, summary and one config file per front point are always
    written (configs as ``.yaml`` unless ``json`` is asked for); ``onnx`` and
    ``timm`` add model files for the front, with the verified weights where the
    verification stage wrote them, else the search's proxy-trained ones. A front
    point without trained weights raises :class:`InputError` naming
    ``--untrained`` before anything is written, unless ``untrained`` is True
    (then it is exported freshly initialised, and labelled so). A folder without
    a run raises naming ``--run-dir``, an unknown format naming ``--format``; a
    run without a feasible trial still gets its tables and a summary that says
    why the front is empty. Afterwards the run's proxy-trained weights are pruned
    to the front (:func:`~mvit_nas.report.models.prune_run_weights`).

    Example::

        result = export_run("runs/demo", formats=("json", "timm"))
        result.front_size, result.weights_trained  # e.g. (4, True): timm files carry trained weights
    """
    chosen = _check_formats(formats)
    run_dir = Path(run_dir)
    require_run(run_dir)
    settings = load_settings(run_dir)
    study = read_study(run_dir)  # one snapshot: every table, plot and summary sees the same trials
    front_trials = front(study)
    configs = {t.number: _config_of(t) for t in front_trials}
    models_asked = any(name in MODEL_FORMATS for name in chosen) and bool(front_trials)
    # Checked before any file is written: a refused export (no trained weights) leaves nothing half done.
    chosen_weights = front_weights(run_dir, front_trials, configs, settings, untrained) if models_asked else {}
    out = writable_folder(run_dir if out_dir is None else Path(out_dir), "--out")
    table = trials_frame(study)
    written = [write_text(out / TRIALS_CSV, table.to_csv(index=False))]
    config_formats = [name for name in chosen if name in CONFIG_FORMATS] or ["yaml"]
    files = _write_configs(out, configs, config_formats)
    written += [out / path for paths in files.values() for path in paths]
    written.append(_write_pareto(out, study, table, files))

    weights: dict[int, tuple[bool, str]] = {}
    if models_asked:
        models = export_models(out, front_trials, configs, chosen, chosen_weights)
        written += models.paths
        weights = models.weights
        for path in models.paths:
            match = TRIAL_FILE.fullmatch(path.name)
            if match:
                files[int(match.group(1))].append(path.relative_to(out).as_posix())
    sources = {number: source for number, (_, source) in weights.items()}

    written.append(plot_front(study, settings, front_trials, out / PLOT_FILE))
    verification = read_report(run_dir, study)  # None unless the run was verified (verify.json)
    if verification is not None and verification.models:
        written.append(plot_verification(verification, out / VERIFY_PLOT_FILE))
    summary = summary_markdown(study, settings, run_dir.name, front_trials, table, files, sources, verification)
    written.append(write_text(out / SUMMARY_FILE, summary))
    return ExportResult(
        run_dir=run_dir,
        out_dir=out,
        paths=tuple(written),
        front=tuple(t.number for t in front_trials),
        hypervolume=hypervolume([t.values for t in front_trials], (0.0, settings.budget_ms)),
        weights_trained=all(trained for trained, _ in weights.values()) if weights else None,
        weights=sources,
        pruned=tuple(prune_run_weights(run_dir, study, front_trials)),
    )
