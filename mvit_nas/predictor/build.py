"""Building a latency table: choose block shapes and calibration configs, time them, fit the predictor.

After OFA's lookup tables, nn-Meter's kernel-level prediction and HAT's learned
predictor:

1. The default space has ~1e15 architectures and thousands of distinct block
   shapes at 5 resolutions, so enumerating them is out. A few hundred shapes
   are drawn from random configs of the space (plus its smallest and largest
   config, :func:`sample_block_shapes`), and each is timed alone
   (:func:`time_block`) with short settings, by the same timing loop as whole
   models (:class:`~mvit_nas.latency.Benchmark`).
2. Per block kind, latency is fitted on the block features (:mod:`.fit`).
3. ~25 whole configs are measured directly, judged as a search judges a trial
   (their ratio to the reference models times one idle calibration taken at the
   build's start, :func:`~mvit_nas.latency.measure_judged`), and the whole-network
   correction is fitted to them: the table predicts the latency a budget is judged
   on. (Fitted to raw medians, it predicted 4.7% below the judged latency.)

Example::

    spec = resolve_spec(device="cpu", backend="onnxruntime", threads=2)
    table = build_table(spec, load_space())         # ~10 minutes on a 2-core CPU
    table.save(default_table_path(spec))
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mvit_nas import model
from mvit_nas.config import ArchConfig, Block
from mvit_nas.latency import Benchmark, Calibration, LatencySpec, calibrate, check_available, measure_judged
from mvit_nas.predictor.features import KINDS, block_features, block_input_shape, block_to_dict, decompose
from mvit_nas.predictor.fit import cross_validated, error_summary, fit_correction, fit_relative_nnls, relative_errors
from mvit_nas.predictor.table import LatencyTable, describe_spec, machine_info
from mvit_nas.space import SearchSpace
from mvit_nas.validate import InputError, check_int, is_int, shown

if TYPE_CHECKING:
    from rich.progress import Progress

# Block timing: short, because a build times hundreds of blocks; the whole-config
# measurements that calibrate the sum use the spec's own (longer) settings.
BLOCK_TIMING: dict[str, Any] = {"warmup": 5, "min_repeats": 15, "min_seconds": 0.25, "max_repeats": 400}
DEFAULT_BLOCKS = {"stem": 40, "mv2": 160, "mobilevit": 160, "head": 40}
DEFAULT_WHOLE_CONFIGS = 25
BUSY_LOAD = 1.0  # 1-minute load average before a build starts: someone else is using a core
STALE_DRAWS = 500  # random configs in a row that add no new block shape: the space has no more
CALIBRATION_DRAWS = 50  # random configs drawn per calibration config wanted (repeats and exclusions are skipped)


# --- what to measure -------------------------------------------------------------------


def random_space_configs(space: SearchSpace, count: int, seed: int) -> list[ArchConfig]:
    """``count`` configs drawn uniformly from ``space`` (one random choice per knob; repeats possible).

    >>> from mvit_nas.space import load_space
    >>> len(random_space_configs(load_space(), 5, seed=1))
    5
    """
    rng = random.Random(seed)
    knobs = space.searched_knobs
    return [space.decode({knob: rng.choice(values) for knob, values in knobs.items()}) for _ in range(count)]


def extreme_configs(space: SearchSpace) -> list[ArchConfig]:
    """The smallest and the largest config of ``space`` (every knob at its min / max choice)."""
    return [space.decode({knob: pick(values) for knob, values in space.choices.items()}) for pick in (min, max)]


def sample_block_shapes(space: SearchSpace, counts: dict[str, int], seed: int = 0) -> dict[str, list[Block]]:
    """Up to ``counts[kind]`` distinct blocks per kind, from the extremes and random configs of ``space``.

    Shapes are taken in the order random configs produce them, so they follow the
    distribution a search sees; the extremes are always in, so the fit spans the space.
    """
    chosen: dict[str, dict[Block, None]] = {kind: {} for kind in KINDS}  # ordered sets
    rng = random.Random(seed)
    knobs = space.searched_knobs

    def add(cfg: ArchConfig) -> bool:
        before = sum(map(len, chosen.values()))
        for block in decompose(cfg):
            if len(chosen[block.kind]) < counts.get(block.kind, 0):
                chosen[block.kind].setdefault(block, None)
        return sum(map(len, chosen.values())) > before

    for cfg in extreme_configs(space):
        add(cfg)
    # Small kinds (stem, head) may have fewer distinct shapes than asked: stop once draws stop adding any.
    stale = 0
    while stale < STALE_DRAWS and any(len(chosen[kind]) < counts.get(kind, 0) for kind in KINDS):
        stale = 0 if add(space.decode({knob: rng.choice(values) for knob, values in knobs.items()})) else stale + 1
    return {kind: list(shapes) for kind, shapes in chosen.items()}


def _calibration_configs(space: SearchSpace, count: int, seed: int, exclude: Sequence[ArchConfig]) -> list[ArchConfig]:
    """``count`` distinct random configs of ``space``, none of them in ``exclude``."""
    excluded = set(exclude)
    calibration: list[ArchConfig] = []
    for cfg in random_space_configs(space, CALIBRATION_DRAWS * count, seed):
        if cfg not in excluded and cfg not in calibration:
            calibration.append(cfg)
        if len(calibration) == count:
            break
    return calibration


# --- timing ----------------------------------------------------------------------------


def block_module(block: Block) -> tuple[nn.Module, tuple[int, ...]]:
    """The module :func:`mvit_nas.model.block_module` builds for ``block``, and the input shape it takes (batch 1).

    >>> module, shape = block_module(decompose(preset("xxs"))[1])
    >>> type(module).__name__, shape
    ('InvertedResidual', (1, 16, 128, 128))
    """
    return model.block_module(block), (1, *block_input_shape(block))


def _check_table_spec(spec: LatencySpec) -> None:
    check_available(spec)
    if spec.backend == "onnxruntime" and spec.device != "cpu":
        raise InputError("--backend", "latency tables support onnxruntime on --device cpu only; on cuda use cudagraph")


def time_block(block: Block, spec: LatencySpec) -> float:
    """Median milliseconds of one ``block`` alone under ``spec`` (its backend, batch, dtype, threads and timing).

    Timed by :class:`~mvit_nas.latency.Benchmark` on a feature map of the block's input
    shape, exactly as whole models are (the spec's height and width are not used).

    >>> from mvit_nas.latency import LatencySpec
    >>> spec = LatencySpec(backend="eager", threads=1, warmup=1, min_repeats=3, min_seconds=0.0)
    >>> time_block(decompose(preset("xxs"))[0], spec) > 0
    True
    """
    _check_table_spec(spec)
    with torch.random.fork_rng(devices=[]):  # weight init must not move the caller's random stream
        module = model.block_module(block)
    return Benchmark(module, spec, block_input_shape(block), peak_memory=False).run().median_ms


def _progress(enabled: bool) -> Progress:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _measure(
    spec: LatencySpec,
    block_spec: LatencySpec,
    shapes: dict[str, list[Block]],
    calibration: list[ArchConfig],
    progress: bool,
) -> tuple[dict[str, list[float]], list[float], Calibration]:
    """Time every block (under ``block_spec``) and judge every calibration config whole (under ``spec``).

    The references are calibrated first, while the machine is quietest.
    """
    measured: dict[str, list[float]] = {kind: [] for kind in KINDS}
    whole_ms: list[float] = []
    total = sum(len(s) for s in shapes.values()) + len(calibration)
    with _progress(progress) as bar:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if busy >= BUSY_LOAD:
            bar.console.print(
                f"[yellow]warning:[/] load average {busy:.1f} before measuring: other work on this machine "
                "makes the table slow to build and its predictions noisy; build it on an idle machine"
            )
        task = bar.add_task(f"latency table {describe_spec(spec)}", total=total)
        references = calibrate(spec)
        for kind in KINDS:
            for block in shapes[kind]:
                bar.update(task, description=f"{kind} blocks")
                measured[kind].append(time_block(block, block_spec))
                bar.advance(task)
        for cfg in calibration:
            bar.update(task, description="whole configs")
            whole_spec = dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution)
            whole_ms.append(measure_judged(model.build_model(cfg), whole_spec, references).judged_ms)
            bar.advance(task)
    return measured, whole_ms, references


# --- fitting ---------------------------------------------------------------------------


def _fit_blocks(
    shapes: dict[str, list[Block]], measured: dict[str, list[float]], batch_size: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per-kind coefficients, and their in-sample and cross-validated errors."""
    coefficients: dict[str, list[float]] = {}
    fit: dict[str, Any] = {}
    for kind in KINDS:
        features = np.asarray([block_features(block, batch_size) for block in shapes[kind]])
        targets = np.asarray(measured[kind])
        weights = fit_relative_nnls(features, targets)
        coefficients[kind] = [float(value) for value in weights]
        fit[kind] = {
            "in_sample": error_summary(relative_errors(features @ weights, targets)),
            "cross_validated": error_summary(cross_validated(features, targets)),
        }
    return coefficients, fit


def _fit_whole(
    table: LatencyTable, calibration: list[ArchConfig], whole_ms: list[float]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The whole-network correction of ``table`` (uncorrected), the calibration records, and their errors."""
    kind_sums = table.kind_sums(calibration)
    sums = kind_sums.sum(axis=1)
    targets = np.asarray(whole_ms)
    correction, loo = fit_correction(kind_sums, targets)
    fit = {
        "block_sum": error_summary(relative_errors(sums, targets)),
        "whole_in_sample": error_summary(relative_errors(correction.apply(kind_sums), targets)),
        "whole_leave_one_out_mean_abs_log_pct": loo,
    }
    record = {
        "form": correction.form,
        "log_scale": correction.log_scale,
        "exponent": correction.exponent,
        "kind_weights": dict(zip(KINDS, correction.kind_weights, strict=True)),
    }
    entries = [
        {"config": cfg.to_dict(), "block_sum_ms": float(s), "measured_ms": float(m)}
        for cfg, s, m in zip(calibration, sums, targets, strict=True)
    ]
    return record, entries, fit


def _block_counts(blocks: dict[str, int] | None) -> dict[str, int]:
    counts = dict(DEFAULT_BLOCKS if blocks is None else blocks)
    for kind in KINDS:
        count = counts.get(kind, 0)
        if not is_int(count) or count < 1:
            raise InputError("blocks", f"needs at least one {kind!r} shape, got {shown(counts.get(kind))}")
    return counts


def build_table(
    spec: LatencySpec,
    space: SearchSpace,
    *,
    blocks: dict[str, int] | None = None,
    whole_configs: int = DEFAULT_WHOLE_CONFIGS,
    seed: int = 0,
    block_timing: dict[str, Any] | None = None,
    exclude: Sequence[ArchConfig] = (),
    progress: bool = True,
) -> LatencyTable:
    """Measure blocks and whole configs of ``space`` under ``spec`` and fit the predictor.

    ``blocks``: how many distinct shapes to time per kind (default :data:`DEFAULT_BLOCKS`,
    ~10 minutes on a 2-core CPU with ONNX Runtime). ``whole_configs``: random configs
    measured whole (with ``spec``'s own timing settings) to fit the correction;
    ``exclude`` keeps given configs out of them (e.g. a benchmark's test set).
    ``block_timing`` overrides :data:`BLOCK_TIMING` (``warmup``, ``min_repeats``,
    ``min_seconds``, ``max_repeats``). Progress goes to stderr.

    Example::

        spec = resolve_spec(device="cpu", backend="onnxruntime", threads=2)
        table = build_table(spec, load_space())
        table.save(default_table_path(spec))
    """
    _check_table_spec(spec)
    check_int("whole_configs", whole_configs, 2)
    started = time.perf_counter()
    counts = _block_counts(blocks)
    timing = {**BLOCK_TIMING, **(block_timing or {})}
    block_spec = dataclasses.replace(spec, **timing)
    shapes = sample_block_shapes(space, counts, seed)
    calibration = _calibration_configs(space, whole_configs, seed + 1, exclude)
    measured, whole_ms, references = _measure(spec, block_spec, shapes, calibration, progress)
    coefficients, fit = _fit_blocks(shapes, measured, spec.batch_size)
    uncorrected = {"form": "none", "log_scale": 0.0, "exponent": 1.0, "kind_weights": dict.fromkeys(KINDS, 1.0)}
    table = LatencyTable(spec=spec, coefficients=coefficients, correction=uncorrected)
    correction, entries, whole_fit = _fit_whole(table, calibration, whole_ms)
    return dataclasses.replace(
        table,
        correction=correction,
        blocks={
            kind: [{**block_to_dict(block), "ms": ms} for block, ms in zip(shapes[kind], measured[kind], strict=True)]
            for kind in KINDS
        },
        calibration=entries,
        judged_against=references.reference_ms,
        fit={**fit, **whole_fit},
        space=space.name,
        machine=machine_info(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 3),
        block_timing=timing,
    )
