"""Accuracy proxies: short training (the default) and zero-cost scores at initialisation.

``train`` trains the architecture for a fixed, short budget at a resolution of its
own (independent of the latency resolution) and scores it by top-1 accuracy on the
held-out split. The zero-cost proxies score an untrained network from one batch:

- ``synflow`` (Tanaka et al., 2020): with every weight replaced by its absolute
  value, the network in eval mode (BatchNorm as the affine map of its running
  statistics, as in the SynFlow pruning code) and in float64 (the product of
  absolute weights overflows float32), an all-ones input; the score is
  ``sum |theta * dR/dtheta|`` over conv and linear weights, R the summed output.
- ``naswot`` (Mellor et al., 2021, the log-det version): the binary code of a
  unit is the sign of its input to each SiLU (SiLU is ReLU-like: the sign says
  which side of the gate the unit is on); the kernel is
  ``K[i, j] = units where images i and j agree`` over a batch; the score is
  ``log|det K|``.
- ``grad_norm`` (Abdelfattah et al., 2021): the sum over conv and linear layers
  of the L2 norm of the weight gradient of the cross-entropy on one batch.

Everything is deterministic for a seed on CPU: the same seed gives bit-identical
scores, in one process or across processes (fixed thread count, deterministic
algorithms, seeded data order, no loader workers).

Example::

    data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
    result = evaluate_proxy(preset("xxs"), ProxySpec(), data)
    result.score  # top-1 validation accuracy in [0, 1]
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mvit_nas.config import ArchConfig
from mvit_nas.data import ProxyData
from mvit_nas.errors import InputError
from mvit_nas.model import build_model, from_timm

log = logging.getLogger(__name__)

# Deterministic cuBLAS needs a fixed workspace, read once when CUDA first initialises, so it is
# set on import (before any CUDA work in this process); a value the user set is kept.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

KINDS = ("train", "synflow", "naswot", "grad_norm")
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.pt"
EVAL_BATCH = 256

StepGuard = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class ProxySpec:
    """How an architecture's accuracy is estimated. Invalid values raise :class:`InputError`.

    ``epochs`` may be fractional (a prefix of one shuffled pass). ``batch_size`` is
    also the batch the zero-cost proxies score.

    Example::

        spec = ProxySpec(kind="synflow")
        assert ProxySpec.from_dict(spec.to_dict()) == spec
    """

    kind: str = "train"
    epochs: float = 0.25
    resolution: int = 64
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError("--proxy", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        _check_number("--epochs", self.epochs, low=0.0, inclusive=False)
        _check_int("proxy.resolution", self.resolution, 32, 1024)
        _check_int("proxy.batch_size", self.batch_size, 2, 65536)
        _check_number("proxy.lr", self.lr, low=0.0, inclusive=False)
        _check_number("proxy.weight_decay", self.weight_decay, low=0.0)
        _check_number("proxy.warmup_fraction", self.warmup_fraction, low=0.0, high=1.0)
        _check_number("proxy.label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        _check_int("proxy.seed", self.seed, 0, 2**63 - 1)
        _check_int("proxy.threads", self.threads, 1, 1024)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError("proxy.device", f"must be cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxySpec:
        """Build from a mapping; missing keys take their defaults, unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise InputError("proxy", f"must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise InputError(f"proxy.{key}", f"unknown key; allowed keys are {', '.join(names)}")
        return cls(**data)


@dataclass(frozen=True)
class ProxyResult:
    """A proxy score (higher is better); for ``train`` it is the top-1 accuracy in [0, 1]."""

    score: float
    accuracy: float | None
    kind: str
    epochs: float
    seconds: float
    train_loss: float | None


@dataclass(frozen=True)
class TrainResult:
    """Final top-1 accuracy, epochs trained, one dict per epoch, and the checkpoint file (if any)."""

    accuracy: float
    epochs: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


class TrialFailed(RuntimeError):
    """The architecture could not be scored; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(name, f"must be an integer in [{low}, {high}], got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float = math.inf, inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low) and value <= high
    if not ok:
        bounds = f"{'[' if inclusive else '('}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
        raise InputError(name, f"must be a number in {bounds}, got {value!r}")


# --- determinism -------------------------------------------------------------------------


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
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("proxy.device", f"{name} was asked for but CUDA is not available")
    return torch.device(name)


def _check_resolution(data: ProxyData, resolution: int) -> None:
    size = tuple(data.val[0][0].shape[-2:])
    if size != (resolution, resolution):
        raise InputError(
            "--resolution", f"the dataset was loaded at {size[0]}x{size[1]}, not {resolution}; load it at {resolution}"
        )


def _model(cfg: ArchConfig, num_classes: int) -> nn.Module:
    return build_model(dataclasses.replace(cfg, num_classes=num_classes))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # The data order of an epoch depends only on (seed, epoch), so a resumed run
    # replays exactly the batches an uninterrupted run would see.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _first_batch(data: ProxyData, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=_epoch_generator(seed, 0))
    return next(iter(loader))


# --- short and long training ----------------------------------------------------------------


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
def _accuracy(model: nn.Module, data: ProxyData, device: torch.device) -> float:
    model.eval()
    correct = 0
    for images, labels in DataLoader(data.val, batch_size=EVAL_BATCH):
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    return correct / len(data.val)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file for ``--init``: safetensors, or a torch file holding a state dict.

    A torch file may wrap the state dict as ``{"state_dict": ...}`` or ``{"model": ...}``
    (common training checkpoints). Only tensors are loaded (``weights_only``).

    Example::

        result = train(cfg, data, 10, 64, init_state_dict=read_state_dict("mobilevit_xxs.safetensors"))
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError("--init", f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and safetensors readers each raise their own types
        problem = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise InputError("--init", f"cannot read weights from {str(path)!r}: {problem}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError("--init", f"{str(path)!r} does not hold a state dict of tensors")
    return state


def _load_init(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy every tensor of a timm-layout state dict that matches the model in name and shape."""
    own = model.state_dict()
    converted = from_timm(state_dict)
    matched = {key: value for key, value in converted.items() if key in own and own[key].shape == value.shape}
    if not matched:
        raise InputError("--init", "no tensor matches the config in name and shape (is it a timm mobilevit_* file?)")
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(own) - set(matched))
    if any(key.startswith("head.fc.") for key in skipped):
        log.warning(
            "init: the classifier does not fit %d classes; it is re-initialised", own["head.fc.weight"].shape[0]
        )
    others = [key for key in skipped if not key.startswith("head.fc.")]
    if others:
        log.warning(
            "init: %d tensors do not match (e.g. %s) and keep their fresh initialisation", len(others), others[0]
        )
    log.info("init: loaded %d of %d tensors", len(matched), len(own))


def _fingerprint(cfg: ArchConfig, data: ProxyData, **settings: Any) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed."""
    return {"config": cfg.to_dict(), "dataset": data.name, "train_size": len(data.train), **settings}


def _save(path: Path, payload: dict[str, Any]) -> None:
    # Write-then-rename: a kill during the save leaves the previous checkpoint intact.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        torch.save(payload, handle)
    os.replace(handle.name, path)


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
    entered around each optimisation step. A NaN or infinite loss raises
    :class:`TrialFailed`.

    ``data`` must hold images at ``resolution`` (load it with that resolution).

    Example::

        data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
        result = train(preset("xxs"), data, epochs=2, resolution=64, checkpoint_dir=Path("out"))
        result.accuracy, result.history[-1]
    """
    _check_number("--epochs", epochs, low=0.0, inclusive=False)
    guard = step_guard or contextlib.nullcontext
    plan = _plan(epochs, len(data.train), batch_size)
    total_steps = sum(plan)
    warmup = max(1, round(warmup_fraction * total_steps))
    settings = dict(
        epochs=epochs, resolution=resolution, seed=seed, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_fraction=warmup_fraction, label_smoothing=label_smoothing,
    )  # fmt: skip
    _check_resolution(data, resolution)
    torch_device = _device(device)
    with _deterministic(seed, threads, torch_device):
        model = _model(cfg, data.num_classes)
        if init_state_dict is not None:
            _load_init(model, init_state_dict)
        model.to(torch_device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(_schedule, warmup=warmup, total=total_steps)
        )
        criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        history: list[dict[str, float]] = []
        checkpoint = None
        fingerprint = _fingerprint(cfg, data, **settings)
        if checkpoint_dir is not None:
            checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            if checkpoint.is_file():
                history = _resume(checkpoint, fingerprint, model, optimizer, scheduler)
        step = sum(plan[: len(history)])
        with _ProgressBar(total_steps, done=step, enabled=progress) as bar:
            for epoch in range(len(history), len(plan)):
                started = time.perf_counter()
                loader = DataLoader(
                    data.train, batch_size, shuffle=True, drop_last=True, generator=_epoch_generator(seed, epoch)
                )
                model.train()
                losses = []
                for images, labels in itertools.islice(loader, plan[epoch]):
                    with guard():
                        loss = criterion(model(images.to(torch_device)), labels.to(torch_device))
                        value = loss.item()
                        if not math.isfinite(value):
                            raise TrialFailed(f"diverged: loss is {value} at step {step}")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    scheduler.step()
                    losses.append(value)
                    step += 1
                    bar.advance(loss=value, epoch=epoch + 1)
                history.append(
                    {
                        "epoch": epoch + 1,
                        "epochs_done": step / (len(data.train) // batch_size),
                        "steps": step,
                        "train_loss": sum(losses) / len(losses),
                        "val_accuracy": _accuracy(model, data, torch_device),
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": time.perf_counter() - started,
                    }
                )
                bar.report(history[-1])
                if checkpoint is not None:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    state |= {"scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
                    _save(checkpoint, {"fingerprint": fingerprint, "epoch": epoch + 1, "history": history, **state})
        if checkpoint is not None:
            _save(checkpoint.parent / WEIGHTS_FILE, {key: value.cpu() for key, value in model.state_dict().items()})
    return TrainResult(history[-1]["val_accuracy"], epochs, history, checkpoint)


def _resume(
    path: Path,
    fingerprint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> list[dict[str, float]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        problem = str(error).splitlines()[0][:200]
        raise InputError("--out", f"checkpoint {str(path)!r} cannot be read ({problem}); use another folder") from None
    stored = state.get("fingerprint", {}) if isinstance(state, dict) else {}
    differ = [key for key in fingerprint if stored.get(key) != fingerprint[key]]
    if differ:
        raise InputError(
            "--out", f"{str(path.parent)!r} holds a checkpoint of a different run ({', '.join(differ)} differ)"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d", path, state["epoch"])
    return list(state["history"])


class _ProgressBar:
    """A rich progress bar over optimisation steps, with a line per epoch (silent when disabled)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
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


# --- zero-cost proxies -------------------------------------------------------------------


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def _synflow(model: nn.Module, resolution: int, device: torch.device) -> float:
    model = copy.deepcopy(model).double().to(device).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    model.zero_grad()
    model(torch.ones(1, 3, resolution, resolution, dtype=torch.float64, device=device)).sum().backward()
    with torch.no_grad():
        return float(sum((layer.weight * layer.weight.grad).abs().sum() for layer in _weighted_layers(model)))


def _grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.train()
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    with torch.no_grad():
        return float(
            sum(layer.weight.grad.norm() for layer in _weighted_layers(model) if layer.weight.grad is not None)
        )


def _naswot(model: nn.Module, images: torch.Tensor) -> float:
    batch = len(images)
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        # Token tensors of the transformer are (batch * patch area, tokens, dim) with the
        # batch outermost, so reshaping to (batch, -1) keeps each image's units together.
        code = (inputs[0].detach().reshape(batch, -1) > 0).double().cpu()
        kernel.add_(code @ code.T).add_((1 - code) @ (1 - code).T)

    handles = [module.register_forward_hook(hook) for module in model.modules() if isinstance(module, nn.SiLU)]
    try:
        model.train()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return float(torch.linalg.slogdet(kernel).logabsdet)


def evaluate_proxy(
    cfg: ArchConfig, spec: ProxySpec, data: ProxyData, step_guard: StepGuard | None = None
) -> ProxyResult:
    """Score ``cfg`` with the proxy ``spec`` describes; raise :class:`TrialFailed` if it cannot.

    ``data`` must hold images at ``spec.resolution``. ``step_guard`` is passed to
    :func:`train` (the zero-cost proxies enter it once around their single pass).

    Example::

        data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
        evaluate_proxy(preset("xxs"), ProxySpec(kind="naswot"), data).score
    """
    started = time.perf_counter()
    if spec.kind == "train":
        result = train(
            cfg, data, spec.epochs, spec.resolution, seed=spec.seed, threads=spec.threads,
            batch_size=spec.batch_size, lr=spec.lr, weight_decay=spec.weight_decay,
            warmup_fraction=spec.warmup_fraction, label_smoothing=spec.label_smoothing, device=spec.device,
            progress=False, step_guard=step_guard,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        loss = result.history[-1]["train_loss"]
        return ProxyResult(result.accuracy, result.accuracy, spec.kind, spec.epochs, seconds, loss)
    device = _device(spec.device)
    guard = step_guard or contextlib.nullcontext
    _check_resolution(data, spec.resolution)
    with _deterministic(spec.seed, spec.threads, device), guard():
        model = _model(cfg, data.num_classes).to(device)
        if spec.kind == "synflow":
            score = _synflow(model, spec.resolution, device)
        else:
            images, labels = _first_batch(data, spec.batch_size, spec.seed)
            images, labels = images.to(device), labels.to(device)
            score = _naswot(model, images) if spec.kind == "naswot" else _grad_norm(model, images, labels)
    if not math.isfinite(score):
        raise TrialFailed(f"{spec.kind} score is {score}")
    return ProxyResult(score, None, spec.kind, 0.0, time.perf_counter() - started, None)
