"""The pipelines behind the CLI commands that chain stages: search then front then exports; a config's training.

``run_search``: the search, the front re-measured (:mod:`mvit_nas.recheck`), the verification
(``RunOptions.verify_epochs``), the exports.
``train_run``: a config file trained on a dataset, from optional initial weights.

Example::

    from mvit_nas import RunOptions, SearchSettings, run_search
    result = run_search(SearchSettings(budget_ms=5.0), "runs/demo", RunOptions(trials=30))
    print(result.outcome.finished, result.export.front_size if result.export else "interrupted")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mvit_nas.config import load_config
from mvit_nas.data import load_dataset, parse_dataset_spec
from mvit_nas.latency import available_threads, resolve_spec
from mvit_nas.proxy import TrainResult, read_state_dict, train
from mvit_nas.recheck import FrontLatency, check_front
from mvit_nas.report import ExportResult, export_run
from mvit_nas.search import SearchOutcome, SearchProgress, search
from mvit_nas.settings import RunOptions, SearchSettings
from mvit_nas.validate import InputError, check_int
from mvit_nas.verify import VerifyProgress, VerifyReport, verify_run


@dataclass(frozen=True)
class SearchRun:
    """A finished (or interrupted) ``run_search``: the search, the front's measurements, the exports."""

    run_dir: Path
    outcome: SearchOutcome
    front_latency: tuple[FrontLatency, ...]
    export: ExportResult | None  # None when the search was interrupted
    verification: VerifyReport | None = None  # None unless RunOptions.verify_epochs asked for it


def default_run_dir(settings: SearchSettings) -> Path:
    """``results/search-<budget>ms-seed<seed>``: deterministic, so re-running the same command resumes."""
    return Path("results") / f"search-{settings.budget_ms:g}ms-seed{settings.seed}"


def run_search(
    settings: SearchSettings,
    run_dir: str | Path | None = None,
    options: RunOptions | None = None,
    progress: Callable[[SearchProgress], None] | None = None,
    verify_progress: Callable[[VerifyProgress], None] | None = None,
) -> SearchRun:
    """Search (or resume), re-measure the front (dropping what no longer fits), verify
    (``options.verify_epochs``), then export tables, plot, summary and configs.

    ``run_dir`` defaults to :func:`default_run_dir`. An interrupted search (Ctrl-C)
    returns at once with ``export=None``; the same call resumes it (the search, then the
    verification's unfinished jobs).
    """
    run_dir = default_run_dir(settings) if run_dir is None else Path(run_dir)
    options = options or RunOptions()
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "trials"}
    outcome = search(settings, run_dir, options.trials, progress=progress, **fields)
    if outcome.interrupted:
        return SearchRun(run_dir, outcome, (), None)
    measured = check_front(run_dir)
    verification = None
    if options.verify_epochs is not None:  # before the export, so that summary.md includes it
        executor = {"workers": options.workers, "address": options.address, "executor": options.executor}
        try:
            verification = verify_run(
                run_dir,
                options.verify_epochs,
                gpus_per_trial=options.gpus_per_trial,
                progress=verify_progress,
                **executor,
            )
        except InputError as error:  # verify's --epochs is the search's --verify-epochs
            if error.field != "--epochs":
                raise
            raise InputError("--verify-epochs", error.problem) from None
    return SearchRun(run_dir, outcome, tuple(measured), export_run(run_dir), verification)


def train_run(
    config_file: str | Path,
    dataset: str = "synthetic",
    epochs: int = 10,
    resolution: int = 64,
    *,
    init: str | Path | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> tuple[TrainResult, Path]:
    """Train the config in ``config_file`` (its classifier sized to the dataset); (result, checkpoint folder).

    ``init`` is a weights file in timm's mobilevit layout (``.pth``, ``.safetensors``, or a
    checkpoint holding one); ``out`` defaults to ``results/train/<config name>``, and the
    same folder resumes. ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``;
    ``threads``: CPU threads (default: every CPU this process may use).
    """
    device = resolve_spec(device=device).device  # "cuda" without CUDA is bad input, named --device
    threads = available_threads() if threads is None else check_int("--threads", threads, 1)
    cfg = load_config(config_file)
    data = load_dataset(parse_dataset_spec(dataset), resolution)
    initial = read_state_dict(init) if init else None
    out = Path("results") / "train" / Path(config_file).stem if out is None else Path(out)
    cfg = dataclasses.replace(cfg, num_classes=data.num_classes)
    options = {"seed": seed, "threads": threads, "device": device, "init_state_dict": initial, "checkpoint_dir": out}
    result = train(cfg, data, epochs, resolution, **options)
    return result, out
