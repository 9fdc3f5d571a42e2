"""Exports of a run folder: tables, the front's configs, a plot, a summary, ONNX models, timm weights.

``export_run(run_dir)`` reads the run's Optuna study once (a read-only snapshot,
:func:`mvit_nas.run.read_study`) and writes, into ``out_dir`` (the run folder by
default):

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
from mvit_nas.report.front import front, hypervolume, seed_dominance, seed_trials
from mvit_nas.report.models import MODEL_FORMATS, TRIAL_FILE, export_models, prune, timm_variant
from mvit_nas.report.plot import plot_front
from mvit_nas.report.summary import summary_markdown
from mvit_nas.report.tables import pareto_frame, trials_frame
from mvit_nas.run import TrialRecord, load_settings, read_study, require_run, trial_stem
from mvit_nas.validate import InputError, writable_folder

__all__ = [
    "FORMATS",
    "ExportResult",
    "export_run",
    "front",
    "hypervolume",
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
SUMMARY_FILE = "summary.md"
CONFIGS_DIR = "configs"


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
    require_run(run_dir)
    settings = load_settings(run_dir)
    study = read_study(run_dir)  # one snapshot: every table, plot and summary sees the same trials
    out = writable_folder(run_dir if out_dir is None else Path(out_dir), "--out")

    front_trials = front(study)
    table = trials_frame(study)
    written = [write_text(out / TRIALS_CSV, table.to_csv(index=False))]
    configs = {t.number: _config_of(t) for t in front_trials}
    config_formats = [name for name in chosen if name in CONFIG_FORMATS] or ["yaml"]
    files = _write_configs(out, configs, config_formats)
    written += [out / path for paths in files.values() for path in paths]
    written.append(_write_pareto(out, study, table, files))

    weights: dict[int, tuple[bool, str]] = {}
    if any(name in MODEL_FORMATS for name in chosen) and front_trials:
        models = export_models(run_dir, out, front_trials, configs, chosen)
        written += models.paths
        weights = models.weights
        for path in models.paths:
            match = TRIAL_FILE.fullmatch(path.name)
            if match:
                files[int(match.group(1))].append(path.relative_to(out).as_posix())
    sources = {number: source for number, (_, source) in weights.items()}

    written.append(plot_front(study, settings, front_trials, out / PLOT_FILE))
    summary = summary_markdown(study, settings, run_dir.name, front_trials, table, files, sources)
    written.append(write_text(out / SUMMARY_FILE, summary))
    return ExportResult(
        run_dir=run_dir,
        out_dir=out,
        paths=tuple(written),
        front=tuple(t.number for t in front_trials),
        hypervolume=hypervolume([t.values for t in front_trials], (0.0, settings.budget_ms)),
        weights_trained=all(trained for trained, _ in weights.values()) if weights else None,
        weights=sources,
    )
