"""Short (and long) training as the accuracy proxy: deterministic, resumable from per-epoch checkpoints.

Everything is deterministic for a seed on CPU: the same seed gives bit-identical
results, in one process or across processes (fixed thread count, deterministic
algorithms, seeded data order, no loader workers).

Example::

    data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
    result = train(preset("xxs"), data, epochs=2, resolution=64, checkpoint_dir=Path("out"))
    result.accuracy, result.history[-1]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mvit_nas.atomic import atomic_path
from mvit_nas.config import ArchConfig
from mvit_nas.data import ProxyData
from mvit_nas.model import build_model
from mvit_nas.proxy.spec import ProxySpec, TrainResult, TrialFailed
from mvit_nas.proxy.weights import _load_init
from mvit_nas.validate import InputError, check_number, first_line

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.pt"
EVAL_BATCH = 256

StepGuard = Callable[[], AbstractContextManager[Any]]


# --- determinism and setup -----------------------------------------------------------------


@contextlib.contextmanager
def _deterministic(seed: int, threads: int, device: torch.device) -> Iterator[None]:
    """Seed torch, fix the thread count and force deterministic kernels; restore on exit."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    # Every CPU kernel used here has a deterministic version; on CUDA a few (e.g. the
    # bilinear-resize backward) do not, and there a warning is better than a failure.
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


def _device(name: str) -> torch.device:
    """The torch device ``name``; asking for CUDA where there is none is the user's error, not a crash."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("proxy.device", f"{name} was asked for but CUDA is not available")
    return torch.device(name)


def _check_resolution(data: ProxyData, resolution: int) -> None:
    if data.val.side != resolution:
        raise InputError(
            "--resolution", f"the dataset is served at {data.val.side} px, not {resolution}; serve it with data.at()"
        )


def _model(cfg: ArchConfig, num_classes: int) -> nn.Module:
    return build_model(dataclasses.replace(cfg, num_classes=num_classes))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # The data order of an epoch depends only on (seed, epoch), so a resumed run
    # replays exactly the batches an uninterrupted run would see.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# --- schedule and evaluation ---------------------------------------------------------------


def _schedule(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up from 1/warmup to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _plan(epochs: float, train_size: int, batch_size: int) -> list[int]:
    """Optimisation steps in each (possibly partial, last) epoch."""
    per_epoch = train_size // batch_size
    if per_epoch < 1:
        raise InputError("proxy.batch_size", f"{batch_size} is larger than the {train_size}-image train split")
    total = max(1, round(epochs * per_epoch))
    return [min(per_epoch, total - start) for start in range(0, total, per_epoch)]


@torch.no_grad()
def _accuracy(model: nn.Module, data: ProxyData, device: torch.device, guard: StepGuard) -> float:
    """Top-1 accuracy of ``model`` on ``data.val``, each batch (loaded and scored) inside ``guard()``."""
    model.eval()
    correct = 0
    batches = iter(DataLoader(data.val, batch_size=EVAL_BATCH))
    while True:
        with guard():
            batch = next(batches, None)
            if batch is None:
                break
            images, labels = batch
            logits = model(images.to(device))
            correct += int((logits.argmax(1).cpu() == labels).sum())
    return correct / len(data.val)


# --- the training loop ---------------------------------------------------------------------


@dataclass
class _Loop:
    """What one training run carries from step to step, and into its checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    device: torch.device
    guard: StepGuard
    step: int = 0

    def epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], bar: _ProgressBar, number: int) -> float:
        """Run one optimisation step per batch; the mean training loss.

        The guard covers each batch's loading (decoding, augmentation, resampling) as
        well as its step: all of it is compute that would slow a latency measurement.
        """
        self.model.train()
        losses = []
        batch_iterator = iter(batches)
        while True:
            with self.guard():
                batch = next(batch_iterator, None)
                if batch is None:
                    break
                images, labels = batch
                loss = self.criterion(self.model(images.to(self.device)), labels.to(self.device))
                value = loss.item()
                if not math.isfinite(value):
                    raise TrialFailed(f"diverged: loss is {value} at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()
            losses.append(value)
            self.step += 1
            bar.advance(loss=value, epoch=number)
        return sum(losses) / len(losses)

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this one is."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state` saved."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])


def _start(
    model: nn.Module, device: torch.device, total_steps: int, settings: Mapping[str, Any], guard: StepGuard
) -> _Loop:
    """AdamW with a per-step warm-up-then-cosine schedule and a label-smoothed loss, for ``model`` on ``device``."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    warmup = max(1, round(settings["warmup_fraction"] * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_schedule, warmup=warmup, total=total_steps)
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])
    return _Loop(model, optimizer, scheduler, criterion, device, guard)


def train(
    cfg: ArchConfig,
    data: ProxyData,
    epochs: float,
    resolution: int,
    *,
    seed: int = 0,
    threads: int = 1,
    batch_size: int = ProxySpec.batch_size,
    lr: float = ProxySpec.lr,
    weight_decay: float = ProxySpec.weight_decay,
    warmup_fraction: float = ProxySpec.warmup_fraction,
    label_smoothing: float = ProxySpec.label_smoothing,
    device: str = "cpu",
    init_state_dict: Mapping[str, torch.Tensor] | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    step_guard: StepGuard | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``data`` (images at ``resolution``) and return its top-1 accuracy.

    AdamW with a per-step linear warm-up then cosine decay, label smoothing, top-1
    on ``data.val`` after every epoch. With ``checkpoint_dir`` a checkpoint is
    written after each epoch (model, optimiser, scheduler, epoch, RNG state, history)
    and a rerun with the same folder continues after the last completed epoch,
    ending with exactly the result of an uninterrupted run; the final weights go to
    ``model.pt`` in timm's layout. ``init_state_dict`` (timm layout) starts from
    trained weights: every tensor that matches in name and shape is loaded, and the
    classifier is re-initialised when the class count differs. ``step_guard()`` is
    entered around every piece of compute: building the model, each training batch
    (loading it and its step), each validation batch. A NaN or infinite loss raises
    :class:`TrialFailed`. The result carries the trained state dict (``weights``).

    ``data`` must hold images at ``resolution`` (load it with that resolution).
    """
    check_number("--epochs", epochs, 0.0, open_low=True)
    plan = _plan(epochs, len(data.train), batch_size)
    settings = dict(
        epochs=epochs, resolution=resolution, seed=seed, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_fraction=warmup_fraction, label_smoothing=label_smoothing,
    )  # fmt: skip
    _check_resolution(data, resolution)
    torch_device = _device(device)
    checkpoint = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
    guard = step_guard or contextlib.nullcontext
    with _deterministic(seed, threads, torch_device):
        with guard():  # building and moving the model is compute too
            model = _model(cfg, data.num_classes)
            if init_state_dict is not None:
                _load_init(model, init_state_dict)
            loop = _start(model, torch_device, sum(plan), settings, guard)
        fingerprint = _fingerprint(cfg, data, **settings)
        history: list[dict[str, float]] = []
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            if checkpoint.is_file():
                history = _resume(checkpoint, fingerprint, loop)
        loop.step = sum(plan[: len(history)])
        with _ProgressBar(sum(plan), done=loop.step, enabled=progress) as bar:
            for epoch in range(len(history), len(plan)):
                history.append(_train_epoch(loop, data, plan[epoch], epoch, seed, batch_size, bar))
                if checkpoint is not None:
                    _save(
                        checkpoint, {"fingerprint": fingerprint, "epoch": epoch + 1, "history": history, **loop.state()}
                    )
        # Detached CPU copies: what a Ray worker sends back and the driver saves, whatever device trained.
        weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        if checkpoint is not None:
            _save(checkpoint.parent / WEIGHTS_FILE, weights)
    return TrainResult(history[-1]["val_accuracy"], epochs, history, checkpoint, weights)


def _train_epoch(
    loop: _Loop, data: ProxyData, steps: int, epoch: int, seed: int, batch_size: int, bar: _ProgressBar
) -> dict[str, float]:
    """Train epoch ``epoch`` (0-based) for ``steps`` steps, evaluate, and return its history record."""
    started = time.perf_counter()
    loader = DataLoader(data.train, batch_size, shuffle=True, drop_last=True, generator=_epoch_generator(seed, epoch))
    train_loss = loop.epoch(itertools.islice(loader, steps), bar, epoch + 1)
    record = {
        "epoch": epoch + 1,
        "epochs_done": loop.step / (len(data.train) // batch_size),
        "steps": loop.step,
        "train_loss": train_loss,
        "val_accuracy": _accuracy(loop.model, data, loop.device, loop.guard),
        "lr": loop.scheduler.get_last_lr()[0],
        "seconds": time.perf_counter() - started,
    }
    bar.report(record)
    return record


# --- checkpoints ---------------------------------------------------------------------------


def _fingerprint(cfg: ArchConfig, data: ProxyData, **settings: Any) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed."""
    return {"config": cfg.to_dict(), "dataset": data.name, "train_size": len(data.train), **settings}


def _save(path: Path, payload: dict[str, Any]) -> None:
    # A kill during the save must leave the previous checkpoint intact.
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _resume(path: Path, fingerprint: dict[str, Any], loop: _Loop) -> list[dict[str, float]]:
    """Restore ``loop`` from the checkpoint at ``path``; the history of the epochs it completed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(
            "--out", f"checkpoint {str(path)!r} cannot be read ({first_line(error)}); use another folder"
        ) from None
    stored = state.get("fingerprint", {}) if isinstance(state, dict) else {}
    differ = [key for key in fingerprint if stored.get(key) != fingerprint[key]]
    if differ:
        raise InputError(
            "--out", f"{str(path.parent)!r} holds a checkpoint of a different run ({', '.join(differ)} differ)"
        )
    loop.restore(state)
    log.info("resuming %s after epoch %d", path, state["epoch"])
    return list(state["history"])


# --- progress ------------------------------------------------------------------------------


class _ProgressBar:
    """A rich progress bar over optimisation steps, with a line per epoch (silent when disabled)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            # Imported only when a bar is shown: proxy evaluations inside a search train without one.
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f}"),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("train", total=total, completed=done, epoch="-", loss=math.nan)

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, **fields)

    def report(self, record: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.console.print(
                f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, "
                f"val top-1 {record['val_accuracy']:.4f} ({record['seconds']:.1f} s)"
            )
