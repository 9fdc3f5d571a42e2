"""Scoring one architecture with the proxy a :class:`ProxySpec` names: short training or a zero-cost score.

Example::

    data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
    evaluate_proxy(preset("xxs"), ProxySpec(kind="naswot"), data).score
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch.utils.data import DataLoader

from mvit_nas.config import ArchConfig
from mvit_nas.data import ProxyData
from mvit_nas.proxy.spec import ProxyResult, ProxySpec, TrialFailed
from mvit_nas.proxy.training import (
    StepGuard,
    _deterministic,
    _device,
    _epoch_generator,
    _model,
    train,
)
from mvit_nas.proxy.zero_cost import grad_norm, naswot, synflow


def evaluate_proxy(
    cfg: ArchConfig, spec: ProxySpec, data: ProxyData, step_guard: StepGuard | None = None
) -> ProxyResult:
    """Score ``cfg`` with the proxy ``spec`` describes; raise :class:`TrialFailed` if it cannot.

    The proxy runs at ``spec.input_size(cfg.resolution)``: ``data`` is served at
    that size (:meth:`~mvit_nas.data.ProxyData.at`). ``step_guard`` is passed to
    :func:`train` (the zero-cost proxies enter it once around their single pass).
    A trained proxy's result carries the trained state dict (``weights``).

    Example::

        data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
        evaluate_proxy(preset("xxs"), ProxySpec(kind="naswot"), data).score
    """
    started = time.perf_counter()
    size = spec.input_size(cfg.resolution)
    data = data.at(size)
    if spec.kind == "train":
        result = train(
            cfg, data, spec.epochs, size, seed=spec.seed, threads=spec.threads,
            batch_size=spec.batch_size, lr=spec.lr, weight_decay=spec.weight_decay,
            warmup_fraction=spec.warmup_fraction, label_smoothing=spec.label_smoothing, device=spec.device,
            progress=False, step_guard=step_guard,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        loss = result.history[-1]["train_loss"]
        return ProxyResult(
            result.accuracy, result.accuracy, spec.kind, spec.epochs, seconds, loss, size, result.weights
        )
    device = _device(spec.device)
    guard = step_guard or contextlib.nullcontext
    with _deterministic(spec.seed, spec.threads, device), guard():
        model = _model(cfg, data.num_classes).to(device)
        if spec.kind == "synflow":
            score = synflow(model, size, device)
        else:
            images, labels = _first_batch(data, spec.batch_size, spec.seed)
            images, labels = images.to(device), labels.to(device)
            score = naswot(model, images) if spec.kind == "naswot" else grad_norm(model, images, labels)
    if not math.isfinite(score):
        raise TrialFailed(f"{spec.kind} score is {score}")
    return ProxyResult(score, None, spec.kind, 0.0, time.perf_counter() - started, None, size)


def _first_batch(data: ProxyData, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch the zero-cost proxies score: the first of the training order epoch 0 would use."""
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=_epoch_generator(seed, 0))
    return next(iter(loader))
