"""Per-device latency predictor: a table of measured building blocks and fitted cost models.

Measuring a model takes seconds (export, warm-up, timing); a search proposes
thousands. A :class:`LatencyTable` turns an :class:`ArchConfig` into a latency
in microseconds, without building anything, for one device, backend, thread
count, batch size and dtype (one :class:`~mvit_nas.latency.LatencySpec`).

How it is built (:func:`build_table`), after OFA's lookup tables, nn-Meter's
kernel-level prediction and HAT's learned predictor:

1. A network is a chain of blocks: the stem, each MobileNetV2 block, each
   MobileViT block (local convs, unfold, ``L`` transformer layers, fold,
   fusion), and the final 1x1 conv with the classifier head. Each block's
   latency depends only on its shape (:class:`BlockShape`).
2. The default space has ~1e15 architectures and thousands of distinct
   block shapes at 5 resolutions, so enumerating them is out. A few hundred
   shapes are drawn from random configs of the space (plus its smallest and
   largest config), each is exported and timed alone with short settings.
3. Per block kind, latency is fitted as a non-negative combination of
   closed-form cost features (multiply-adds per operator family, elements
   moved, softmax scores, a per-call and per-layer constant), minimising the
   *relative* error. Non-negative weights keep the model monotone: more work
   never predicts less time.
4. A block sum is biased against the whole network (per-call overhead counted
   once per block, layout changes and fusions at block edges, cache effects),
   so ~25 whole configs are measured directly and a correction is fitted to
   them: a power law ``whole = exp(a) * block_sum ** b``, or one scale per block
   kind, whichever predicts the calibration configs better left-one-out.

The table (measurements, coefficients, spec, machine) is one JSON file,
by default ``results/latency_tables/<device>-<backend>-<threads>t.json``.

Example::

    spec = resolve_spec(device="cpu", backend="onnxruntime")
    table = build_table(spec, load_space())         # ~10 minutes on a 2-core CPU
    table.save(default_table_path(spec))
    table = load_table(spec)                         # later, or in another process
    table.predict(preset("xxs"))                     # ms, at the config's resolution
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from mvit_nas.config import ArchConfig, MobileViTStageConfig, conv_out, make_divisible
from mvit_nas.errors import InputError
from mvit_nas.latency import (
    _BACKENDS,
    DTYPES,
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    LatencySpec,
    _check_available,
    _gc_paused,
    _ort_session,
    _torch_threads,
    measure_config,
)
from mvit_nas.model import ClassifierHead, ConvNormAct, InvertedResidual, MobileViTBlock
from mvit_nas.space import SearchSpace

TABLE_FORMAT = 1
TABLES_DIR = Path("results") / "latency_tables"
KINDS = ("stem", "mv2", "mobilevit", "head")

# Block timing: short, because a build times hundreds of blocks; the whole-config
# measurements that calibrate the sum use the spec's own (longer) settings.
BLOCK_TIMING: dict[str, Any] = {"warmup": 5, "min_repeats": 15, "min_seconds": 0.25, "max_repeats": 400}
DEFAULT_BLOCKS = {"stem": 40, "mv2": 160, "mobilevit": 160, "head": 40}
DEFAULT_WHOLE_CONFIGS = 25
BUSY_LOAD = 1.0  # 1-minute load average before a build starts: someone else is using a core
STALE_DRAWS = 500  # random configs in a row that add no new block shape: the space has no more
# A fitted exponent outside this range means the few calibration points are noise, not bias.
EXPONENT_RANGE = (0.5, 2.0)
# Spec fields a latency depends on (timing settings only change how precisely it is known).
_SPEC_FLAGS = {
    "device": "--device",
    "backend": "--backend",
    "threads": "--threads",
    "batch_size": "--batch-size",
    "dtype": "--dtype",
}


# --- block shapes ----------------------------------------------------------------------

# The integers that fix a block's computation, per kind (batch size comes from the spec).
SHAPE_FIELDS: dict[str, tuple[str, ...]] = {
    "stem": ("out_channels", "height", "width"),
    "mv2": ("in_channels", "out_channels", "stride", "expansion", "height", "width"),
    "mobilevit": (
        "channels",
        "dim",
        "ffn_dim",
        "layers",
        "num_heads",
        "patch_h",
        "patch_w",
        "height",
        "width",
    ),
    "head": ("in_channels", "final_channels", "num_classes", "height", "width"),
}


@dataclass(frozen=True)
class BlockShape:
    """One block of the network: its kind and the integers of :data:`SHAPE_FIELDS` (input height/width).

    Example::

        BlockShape("mv2", (16, 24, 2, 2, 128, 128)).as_dict()
        # {"kind": "mv2", "in_channels": 16, "out_channels": 24, "stride": 2, ...}
    """

    kind: str
    dims: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(zip(SHAPE_FIELDS[self.kind], self.dims, strict=True))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockShape:
        kind = data["kind"]
        return cls(kind, tuple(int(data[name]) for name in SHAPE_FIELDS[kind]))


def decompose(cfg: ArchConfig, height: int | None = None, width: int | None = None) -> list[BlockShape]:
    """The blocks ``build_model(cfg)`` runs, in order, on a (3, height, width) input.

    Mirrors :class:`~mvit_nas.model.MobileViT`: stem, layer1-2 MV2 blocks, for
    layer3-5 a strided MV2 block and a MobileViT block, then final conv + head.

    Example::

        [block.kind for block in decompose(preset("xxs"))]
        # ["stem", "mv2", "mv2", "mv2", "mv2", "mv2", "mobilevit", "mv2", "mobilevit", "mv2", "mobilevit", "head"]
    """
    height = cfg.resolution if height is None else height
    width = height if width is None else width
    blocks = [BlockShape("stem", (cfg.stem_channels, height, width))]
    h, w = conv_out(height, 2), conv_out(width, 2)
    channels = cfg.stem_channels
    for stride, stage in ((1, cfg.layer1), (2, cfg.layer2)):
        for index in range(stage.num_blocks):
            block_stride = stride if index == 0 else 1
            blocks.append(BlockShape("mv2", (channels, stage.out_channels, block_stride, stage.mv2_exp, h, w)))
            h, w = conv_out(h, block_stride), conv_out(w, block_stride)
            channels = stage.out_channels
    for stage in cfg.vit_stages:
        blocks.append(BlockShape("mv2", (channels, stage.out_channels, 2, stage.mv2_exp, h, w)))
        h, w = conv_out(h, 2), conv_out(w, 2)
        channels = stage.out_channels
        dims = (
            channels,
            stage.transformer_channels,
            stage.ffn_dim,
            stage.transformer_blocks,
            stage.num_heads,
            stage.patch_h,
            stage.patch_w,
            h,
            w,
        )
        blocks.append(BlockShape("mobilevit", dims))
    blocks.append(BlockShape("head", (channels, cfg.final_channels, cfg.num_classes, h, w)))
    return blocks


# --- features --------------------------------------------------------------------------

# Units: millions of multiply-adds / elements, so coefficients read as ms per M.
FEATURES: dict[str, tuple[str, ...]] = {
    "stem": ("calls", "conv_macs", "elements"),
    "mv2": ("calls", "pointwise_macs", "depthwise_macs", "elements"),
    "mobilevit": (
        "calls",
        "layers",
        "conv_macs",
        "linear_macs",
        "attention_macs",
        "attention_scores",
        "token_elements",
        "ffn_elements",
        "map_elements",
        "resize_elements",
    ),
    "head": ("calls", "conv_macs", "elements", "linear_macs"),
}
_M = 1e-6


def _stem_features(dims: tuple[int, ...], batch: int) -> list[float]:
    channels, height, width = dims
    oh, ow = conv_out(height, 2), conv_out(width, 2)
    return [1.0, batch * oh * ow * channels * 27 * _M, batch * (3 * height * width + channels * oh * ow) * _M]


def _mv2_features(dims: tuple[int, ...], batch: int) -> list[float]:
    cin, cout, stride, expansion, height, width = dims
    hidden = make_divisible(cin * expansion)
    oh, ow = conv_out(height, stride), conv_out(width, stride)
    pointwise = height * width * cin * hidden + oh * ow * hidden * cout
    depthwise = oh * ow * hidden * 9
    elements = cin * height * width + hidden * height * width + hidden * oh * ow + cout * oh * ow
    if stride == 1 and cin == cout:
        elements += cout * oh * ow  # the residual add reads and writes once more
    return [1.0, batch * pointwise * _M, batch * depthwise * _M, batch * elements * _M]


def _mobilevit_features(dims: tuple[int, ...], batch: int) -> list[float]:
    channels, dim, ffn, layers, heads, patch_h, patch_w, height, width = dims
    new_h, new_w = math.ceil(height / patch_h) * patch_h, math.ceil(width / patch_w) * patch_w
    pixels = height * width
    conv = pixels * (channels * channels * 9 + channels * dim + dim * channels + 2 * channels * channels * 9)
    sequences = batch * patch_h * patch_w
    patches = (new_h // patch_h) * (new_w // patch_w)
    tokens = sequences * patches
    linear = layers * tokens * (4 * dim * dim + 2 * dim * ffn)
    attention = layers * 2 * sequences * patches * patches * dim
    scores = layers * sequences * heads * patches * patches
    # Unfold/fold copies, concatenation and the conv activations, all at map resolution.
    map_elements = batch * (pixels * (4 * channels + 2 * dim) + 2 * new_h * new_w * dim)
    resize = batch * dim * (new_h * new_w + pixels) if (new_h, new_w) != (height, width) else 0
    return [
        1.0,
        float(layers),
        batch * conv * _M,
        linear * _M,
        attention * _M,
        scores * _M,
        layers * tokens * dim * _M,
        layers * tokens * ffn * _M,
        map_elements * _M,
        resize * _M,
    ]


def _head_features(dims: tuple[int, ...], batch: int) -> list[float]:
    cin, final, classes, height, width = dims
    pixels = height * width
    return [1.0, batch * pixels * cin * final * _M, batch * pixels * (cin + final) * _M, batch * final * classes * _M]


_FEATURE_FUNCTIONS: dict[str, Callable[[tuple[int, ...], int], list[float]]] = {
    "stem": _stem_features,
    "mv2": _mv2_features,
    "mobilevit": _mobilevit_features,
    "head": _head_features,
}


def block_features(block: BlockShape, batch_size: int = 1) -> list[float]:
    """Closed-form cost features of ``block`` (names in :data:`FEATURES`), for a batch of ``batch_size``."""
    return _FEATURE_FUNCTIONS[block.kind](block.dims, batch_size)


# --- block modules and timing ----------------------------------------------------------


def block_module(block: BlockShape) -> tuple[nn.Module, tuple[int, ...]]:
    """An ``nn.Module`` computing ``block`` exactly as in ``build_model``, and its input shape (batch 1)."""
    d = block.as_dict()
    if block.kind == "stem":
        return ConvNormAct(3, d["out_channels"], 3, stride=2), (1, 3, d["height"], d["width"])
    if block.kind == "mv2":
        module = InvertedResidual(d["in_channels"], d["out_channels"], d["stride"], d["expansion"])
        return module, (1, d["in_channels"], d["height"], d["width"])
    if block.kind == "mobilevit":
        stage = MobileViTStageConfig(
            out_channels=d["channels"],
            mv2_exp=1,  # belongs to the stage's MV2 block, measured separately
            transformer_channels=d["dim"],
            ffn_dim=d["ffn_dim"],
            transformer_blocks=d["layers"],
            num_heads=d["num_heads"],
            patch_h=d["patch_h"],
            patch_w=d["patch_w"],
        )
        return MobileViTBlock(d["channels"], stage, dropout=0.0), (1, d["channels"], d["height"], d["width"])
    head = nn.Sequential(
        ConvNormAct(d["in_channels"], d["final_channels"], 1),
        ClassifierHead(d["final_channels"], d["num_classes"], dropout=0.0),
    )
    return head, (1, d["in_channels"], d["height"], d["width"])


def _prepare_block(module: nn.Module, x: torch.Tensor, spec: LatencySpec) -> Callable[[], object]:
    """One inference of ``module`` on ``x`` under ``spec``'s backend, ready to time."""
    if spec.backend != "onnxruntime":
        # latency's eager / cudagraph / compile preparation takes any input tensor.
        return _BACKENDS[spec.backend](module, x, spec).run
    if spec.device != "cpu":
        raise InputError("--backend", "latency tables support onnxruntime on --device cpu only; on cuda use cudagraph")
    # latency.export_onnx fixes a 3-channel image input; a block takes a feature map. Same exporter,
    # same fixed shapes and the same session options as latency.measure, so blocks run like the model.
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(scratch) / "block.onnx"
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=ONNX_OPSET,
        )
        session = _ort_session(path, spec)
    feed = {INPUT_NAME: x.numpy()}
    return lambda: session.run(None, feed)


def time_block(block: BlockShape, spec: LatencySpec) -> float:
    """Median milliseconds of one ``block`` alone under ``spec`` (its batch, dtype, threads and timing).

    Example::

        time_block(BlockShape("stem", (16, 256, 256)), LatencySpec(min_seconds=0.2))  # ~0.3
    """
    with torch.random.fork_rng(devices=[]):  # weight init must not move the caller's random stream
        module, shape = block_module(block)
    dtype = DTYPES[spec.dtype]
    module = module.to(device=spec.device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((spec.batch_size, *shape[1:]), generator=generator).to(device=spec.device, dtype=dtype)
    cuda = spec.device == "cuda"
    samples: list[float] = []
    with _torch_threads(spec.threads):
        run = _prepare_block(module, x, spec)  # outside inference mode: the ONNX exporter traces
        with torch.inference_mode(), _gc_paused():
            for _ in range(spec.warmup):
                run()
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            while len(samples) < spec.max_repeats and (
                len(samples) < spec.min_repeats or time.perf_counter() - started < spec.min_seconds
            ):
                begin = time.perf_counter()
                run()
                if cuda:
                    torch.cuda.synchronize()
                samples.append((time.perf_counter() - begin) * 1e3)
    return float(np.median(samples))


# --- fitting ---------------------------------------------------------------------------


def _fit_relative_nnls(features: np.ndarray, targets: np.ndarray, reweights: int = 2) -> np.ndarray:
    """Non-negative ``w`` making ``features @ w`` close to ``targets`` in *relative* terms."""
    # Residuals divided by the target make a 1 ms block off by 0.1 ms count as much as a
    # 10 ms block off by 1 ms. Dividing by the target alone biases the fit low (over-predicting
    # costs more than under-predicting), so the fit is redone with sqrt(target * prediction),
    # which weighs both directions alike, as an error in logs would. Columns are rescaled so
    # that NNLS sees comparable magnitudes; the weights are scaled back.
    scale = targets
    for _ in range(reweights + 1):
        scaled = features / scale[:, None]
        norms = np.linalg.norm(scaled, axis=0)
        norms[norms == 0] = 1.0
        weights = nnls(scaled / norms, targets / scale)[0] / norms
        predicted = features @ weights
        scale = np.sqrt(targets * np.maximum(predicted, 1e-3 * targets))
    return weights


def _relative_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return (predicted - measured) / measured


def _error_summary(errors: np.ndarray) -> dict[str, float]:
    absolute = np.abs(errors)
    return {
        "n": len(errors),
        "median_abs_pct": float(np.median(absolute) * 100) if len(errors) else math.nan,
        "max_abs_pct": float(absolute.max() * 100) if len(errors) else math.nan,
        "within_10pct": float(np.mean(absolute <= 0.10)) if len(errors) else math.nan,
    }


def _cross_validated(features: np.ndarray, targets: np.ndarray, folds: int = 5) -> np.ndarray:
    """Out-of-fold relative errors: how far the fitted model is off on shapes it has not seen."""
    count = len(targets)
    folds = min(folds, count)
    if folds < 2:
        return np.zeros(0)
    order = np.random.default_rng(0).permutation(count)
    errors = np.empty(count)
    for fold in range(folds):
        held = order[fold::folds]
        kept = np.setdiff1d(order, held)
        weights = _fit_relative_nnls(features[kept], targets[kept])
        errors[held] = _relative_errors(features[held] @ weights, targets[held])
    return errors


@dataclass(frozen=True)
class _Correction:
    """``whole = exp(log_scale) * (sum over kinds of kind_weight * kind_sum) ** exponent``."""

    form: str
    log_scale: float
    exponent: float
    kind_weights: tuple[float, ...]

    def apply(self, kind_sums: np.ndarray) -> np.ndarray:
        return np.exp(self.log_scale) * np.power(kind_sums @ np.asarray(self.kind_weights), self.exponent)


def _fit_power(kind_sums: np.ndarray, measured: np.ndarray) -> _Correction | None:
    """One power law on the plain block sum (least squares in logs)."""
    logs, targets = np.log(kind_sums.sum(axis=1)), np.log(measured)
    ones = (1.0,) * kind_sums.shape[1]
    if len(measured) >= 3 and np.ptp(logs) > 0:
        design = np.column_stack([np.ones_like(logs), logs])
        (log_scale, exponent), *_ = np.linalg.lstsq(design, targets, rcond=None)
        # An exponent far from 1 says the few points are noise, not a bias of the sum.
        if EXPONENT_RANGE[0] <= exponent <= EXPONENT_RANGE[1]:
            return _Correction("power", float(log_scale), float(exponent), ones)
    return _Correction("scale", float(np.mean(targets - logs)), 1.0, ones)


def _fit_per_kind(kind_sums: np.ndarray, measured: np.ndarray) -> _Correction | None:
    """One scale per block kind: a bias that differs by kind (e.g. conv layout changes at block edges)."""
    if len(measured) < 3 * kind_sums.shape[1]:
        return None
    weights = _fit_relative_nnls(kind_sums, measured)
    if np.any(weights <= 0):  # a kind the data says costs nothing: overfitted noise
        return None
    return _Correction("per_kind", 0.0, 1.0, tuple(float(w) for w in weights))


_CORRECTIONS: tuple[Callable[[np.ndarray, np.ndarray], _Correction | None], ...] = (_fit_power, _fit_per_kind)


def _fit_correction(kind_sums: np.ndarray, measured: np.ndarray) -> tuple[_Correction, dict[str, float]]:
    """The correction form with the lowest leave-one-out error on the calibration configs, and every form's error.

    The simplest form (first in :data:`_CORRECTIONS`) wins ties: a few noisy points
    should not buy parameters.
    """
    scores: dict[str, float] = {}
    best: tuple[float, _Correction] | None = None
    for fit in _CORRECTIONS:
        full = fit(kind_sums, measured)
        if full is None:
            continue
        errors = []
        for held in range(len(measured)):
            kept = np.arange(len(measured)) != held
            partial = fit(kind_sums[kept], measured[kept])
            if partial is None:
                break
            errors.append(abs(math.log(float(partial.apply(kind_sums[held])) / measured[held])))
        else:
            score = float(np.mean(errors)) if errors else math.inf
            scores[full.form] = round(100 * score, 3)
            if best is None or score < best[0]:
                best = (score, full)
    assert best is not None  # the power form always fits
    return best[1], scores


# --- the table -------------------------------------------------------------------------


def _describe(spec: LatencySpec) -> str:
    text = f"{spec.device}/{spec.backend}/{spec.threads} threads/batch {spec.batch_size}"
    return text if spec.dtype == "float32" else f"{text}/{spec.dtype}"


def _build_command(spec: LatencySpec) -> str:
    command = f"mvit-nas latency-table build --device {spec.device} --backend {spec.backend} --threads {spec.threads}"
    return command if spec.batch_size == 1 else f"{command} --batch-size {spec.batch_size}"


def default_table_path(spec: LatencySpec) -> Path:
    """``results/latency_tables/<device>-<backend>-<threads>t.json`` (relative to the working directory).

    A batch size other than 1 and a dtype other than float32 add ``-b<N>`` / ``-<dtype>``.

    Example::

        default_table_path(LatencySpec(threads=2))  # results/latency_tables/cpu-onnxruntime-2t.json
    """
    name = f"{spec.device}-{spec.backend}-{spec.threads}t"
    if spec.batch_size != 1:
        name += f"-b{spec.batch_size}"
    if spec.dtype != "float32":
        name += f"-{spec.dtype}"
    return TABLES_DIR / f"{name}.json"


def machine_info() -> dict[str, Any]:
    """The machine a table was measured on (a table predicts for that machine only)."""
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        # Other work on the machine while measuring makes a table slow and noisy; this says whether there was any.
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


@dataclass(frozen=True)
class LatencyTable:
    """Measured blocks, fitted per-kind coefficients and the whole-network correction for one spec.

    ``spec``'s device, backend, threads, batch size and dtype are what the table
    predicts for; its height/width do not matter (each config is predicted at its
    own resolution). Everything is plain JSON data, so ``load(save(t)) == t``.

    Example::

        table = LatencyTable.load("results/latency_tables/cpu-onnxruntime-2t.json", spec)
        table.predict(preset("xs"))                    # e.g. 11.8 (ms)
        table.predict_many([preset("xxs"), preset("s")])
    """

    spec: LatencySpec
    coefficients: dict[str, list[float]]  # kind -> weights of FEATURES[kind]
    correction: dict[str, Any]  # {"form", "log_scale", "exponent", "kind_weights": {kind: w}}
    blocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> [{shape..., "ms"}]
    calibration: list[dict[str, Any]] = field(default_factory=list)  # [{"config", "block_sum_ms", "measured_ms"}]
    fit: dict[str, Any] = field(default_factory=dict)  # error summaries, for the record
    space: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    build_seconds: float = 0.0
    block_timing: dict[str, Any] = field(default_factory=dict)

    # --- prediction --------------------------------------------------------------------

    def block_latencies(self, cfg: ArchConfig) -> list[tuple[BlockShape, float]]:
        """Each block of ``cfg`` (at ``cfg.resolution``) with its predicted ms, before the whole-network correction.

        Example::

            for block, ms in table.block_latencies(preset("xxs")):
                print(block.kind, block.dims, f"{ms:.3f} ms")
        """
        batch = self.spec.batch_size
        return [
            (block, float(np.dot(block_features(block, batch), self.coefficients[block.kind])))
            for block in decompose(cfg)
        ]

    def kind_sums(self, cfgs: Iterable[ArchConfig]) -> np.ndarray:
        """(configs, kinds) matrix of predicted block ms summed per kind (one matrix product per kind)."""
        batch = self.spec.batch_size
        owners: dict[str, list[int]] = {kind: [] for kind in KINDS}
        rows: dict[str, list[list[float]]] = {kind: [] for kind in KINDS}
        count = 0
        for index, cfg in enumerate(cfgs):
            count += 1
            for block in decompose(cfg):
                owners[block.kind].append(index)
                rows[block.kind].append(block_features(block, batch))
        sums = np.zeros((count, len(KINDS)))
        for column, kind in enumerate(KINDS):
            if rows[kind]:
                np.add.at(sums[:, column], owners[kind], np.asarray(rows[kind]) @ np.asarray(self.coefficients[kind]))
        return sums

    def _correction(self) -> _Correction:
        c = self.correction
        weights = tuple(float(c["kind_weights"][kind]) for kind in KINDS)
        return _Correction(c["form"], float(c["log_scale"]), float(c["exponent"]), weights)

    def predict(self, cfg: ArchConfig) -> float:
        """Predicted latency (ms) of ``build_model(cfg)`` at ``cfg.resolution``, batch ``spec.batch_size``.

        Example::

            table.predict(preset("xxs"))  # e.g. 6.4
        """
        return self.predict_many([cfg])[0]

    def predict_many(self, cfgs: Iterable[ArchConfig]) -> list[float]:
        """:meth:`predict` for each config, vectorised.

        Example::

            table.predict_many(space.decode(p) for p in params)  # [3.1, 7.9, ...]
        """
        sums = self.kind_sums(cfgs)
        return [float(value) for value in self._correction().apply(sums)] if len(sums) else []

    # --- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_dict()
        data["features"] = {kind: list(names) for kind, names in FEATURES.items()}
        return {"format": TABLE_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise InputError("--latency", f"{where} has format {found!r}, expected {TABLE_FORMAT}; rebuild it")
        if data.get("features") != {kind: list(names) for kind, names in FEATURES.items()}:
            raise InputError("--latency", f"{where} was fitted on other features (older mvit-nas); rebuild it")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            fields = {key: value for key, value in data.items() if key in names}
            fields["spec"] = LatencySpec.from_dict(fields["spec"])
            table = cls(**fields)
        except (KeyError, TypeError) as error:
            raise InputError("--latency", f"{where} is incomplete or malformed ({error}); rebuild it") from None
        correction = table.correction
        for kind in KINDS:
            if len(table.coefficients.get(kind, ())) != len(FEATURES[kind]):
                raise InputError("--latency", f"{where} lacks coefficients for {kind!r} blocks; rebuild it")
            if not isinstance(correction, dict) or kind not in correction.get("kind_weights", {}):
                raise InputError("--latency", f"{where} lacks the whole-network correction; rebuild it")
        if not all(key in correction for key in ("form", "log_scale", "exponent")):
            raise InputError("--latency", f"{where} lacks the whole-network correction; rebuild it")
        return table

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically: a reader never sees half a file).

        Example::

            table.save(default_table_path(table.spec))
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(scratch, path)
        return path

    @classmethod
    def load(cls, path: str | Path, spec: LatencySpec | None = None) -> LatencyTable:
        """Read a table; with ``spec``, raise :class:`InputError` naming the flag it was not measured under.

        Example::

            table = LatencyTable.load("cpu-onnxruntime-2t.json", resolve_spec(threads=2))
        """
        path = Path(path)
        if not path.is_file():
            what = f"for {_describe(spec)} " if spec is not None else ""
            command = _build_command(spec) if spec is not None else "mvit-nas latency-table build ..."
            raise InputError("--latency", f"no latency table {what}at {str(path)!r}; build one with `{command}`")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError("--latency", f"{str(path)!r} is not a latency table (invalid JSON: {error})") from None
        table = cls.from_dict(data, where=repr(str(path)))
        if spec is not None:
            table.check_spec(spec)
        return table

    def check_spec(self, spec: LatencySpec) -> None:
        """Raise :class:`InputError` naming the flag if ``spec`` asks for what this table did not measure."""
        for name, flag in _SPEC_FLAGS.items():
            ours, asked = getattr(self.spec, name), getattr(spec, name)
            if ours != asked:
                raise InputError(
                    flag,
                    f"the latency table was measured with {flag} {ours}, but {asked} was asked; "
                    f"build one with `{_build_command(spec)}`",
                )


def load_table(spec: LatencySpec, path: str | Path | None = None) -> LatencyTable:
    """The table for ``spec`` (from ``path``, default :func:`default_table_path`), checked against ``spec``.

    Example::

        table = load_table(resolve_spec(device="cpu", backend="onnxruntime"))
    """
    return LatencyTable.load(default_table_path(spec) if path is None else path, spec)


# --- building --------------------------------------------------------------------------


def random_space_configs(space: SearchSpace, count: int, seed: int) -> list[ArchConfig]:
    """``count`` configs drawn uniformly from ``space`` (one random choice per knob; repeats possible).

    Example::

        configs = random_space_configs(load_space(), 50, seed=1)
    """
    rng = random.Random(seed)
    knobs = space.searched_knobs
    return [space.decode({knob: rng.choice(values) for knob, values in knobs.items()}) for _ in range(count)]


def extreme_configs(space: SearchSpace) -> list[ArchConfig]:
    """The smallest and the largest config of ``space`` (every knob at its min / max choice)."""
    return [space.decode({knob: pick(values) for knob, values in space.choices.items()}) for pick in (min, max)]


def sample_block_shapes(space: SearchSpace, counts: dict[str, int], seed: int = 0) -> dict[str, list[BlockShape]]:
    """Up to ``counts[kind]`` distinct block shapes per kind, from the extremes and random configs of ``space``.

    Shapes are taken in the order random configs produce them, so they follow the
    distribution a search sees; the extremes are always in, so the fit spans the space.
    """
    chosen: dict[str, dict[BlockShape, None]] = {kind: {} for kind in KINDS}  # ordered sets
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


def _progress(enabled: bool) -> Any:
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
    _check_available(spec)
    if spec.backend == "onnxruntime" and spec.device != "cpu":
        raise InputError("--backend", "latency tables support onnxruntime on --device cpu only; on cuda use cudagraph")
    if isinstance(whole_configs, bool) or not isinstance(whole_configs, int) or whole_configs < 2:
        raise InputError("whole_configs", f"must be an integer >= 2, got {whole_configs!r}")
    started = time.perf_counter()
    counts = dict(DEFAULT_BLOCKS if blocks is None else blocks)
    for kind in KINDS:
        if counts.get(kind, 0) < 1:
            raise InputError("blocks", f"needs at least one {kind!r} shape, got {counts.get(kind)!r}")
    timing = {**BLOCK_TIMING, **(block_timing or {})}
    block_spec = dataclasses.replace(spec, **timing)
    shapes = sample_block_shapes(space, counts, seed)
    excluded = set(exclude)
    calibration: list[ArchConfig] = []
    for cfg in random_space_configs(space, 50 * whole_configs, seed + 1):
        if cfg not in excluded and cfg not in calibration:
            calibration.append(cfg)
        if len(calibration) == whole_configs:
            break

    measured: dict[str, list[float]] = {kind: [] for kind in KINDS}
    total = sum(len(s) for s in shapes.values()) + len(calibration)
    whole_ms: list[float] = []
    with _progress(progress) as bar:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if busy >= BUSY_LOAD:
            bar.console.print(
                f"[yellow]warning:[/] load average {busy:.1f} before measuring: other work on this machine "
                "makes the table slow to build and its predictions noisy; build it on an idle machine"
            )
        task = bar.add_task(f"latency table {_describe(spec)}", total=total)
        for kind in KINDS:
            for block in shapes[kind]:
                bar.update(task, description=f"{kind} blocks")
                measured[kind].append(time_block(block, block_spec))
                bar.advance(task)
        for cfg in calibration:
            bar.update(task, description="whole configs")
            whole_spec = dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution)
            whole_ms.append(measure_config(cfg, whole_spec).median_ms)
            bar.advance(task)

    coefficients: dict[str, list[float]] = {}
    fit: dict[str, Any] = {}
    for kind in KINDS:
        features = np.asarray([block_features(block, spec.batch_size) for block in shapes[kind]])
        targets = np.asarray(measured[kind])
        weights = _fit_relative_nnls(features, targets)
        coefficients[kind] = [float(value) for value in weights]
        fit[kind] = {
            "in_sample": _error_summary(_relative_errors(features @ weights, targets)),
            "cross_validated": _error_summary(_cross_validated(features, targets)),
        }
    uncorrected = {"form": "none", "log_scale": 0.0, "exponent": 1.0, "kind_weights": dict.fromkeys(KINDS, 1.0)}
    table = LatencyTable(spec=spec, coefficients=coefficients, correction=uncorrected)
    kind_sums = table.kind_sums(calibration)
    sums = kind_sums.sum(axis=1)
    targets = np.asarray(whole_ms)
    correction, loo = _fit_correction(kind_sums, targets)
    fit["block_sum"] = _error_summary(_relative_errors(sums, targets))
    fit["whole_in_sample"] = _error_summary(_relative_errors(correction.apply(kind_sums), targets))
    fit["whole_leave_one_out_mean_abs_log_pct"] = loo
    return dataclasses.replace(
        table,
        correction={
            "form": correction.form,
            "log_scale": correction.log_scale,
            "exponent": correction.exponent,
            "kind_weights": dict(zip(KINDS, correction.kind_weights, strict=True)),
        },
        blocks={
            kind: [{**block.as_dict(), "ms": ms} for block, ms in zip(shapes[kind], measured[kind], strict=True)]
            for kind in KINDS
        },
        calibration=[
            {"config": cfg.to_dict(), "block_sum_ms": float(s), "measured_ms": float(m)}
            for cfg, s, m in zip(calibration, sums, targets, strict=True)
        ],
        fit=fit,
        space=space.name,
        machine=machine_info(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 3),
        block_timing=timing,
    )


def calibration_configs(table: LatencyTable) -> list[ArchConfig]:
    """The whole configs ``table``'s correction was fitted on (to keep them out of an evaluation)."""
    return [ArchConfig.from_dict(entry["config"]) for entry in table.calibration]
