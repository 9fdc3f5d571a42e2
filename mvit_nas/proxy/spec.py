"""Proxy records: what to evaluate (:class:`ProxySpec`), what came out, and why a trial could not be scored.

Example:

>>> ProxySpec(kind="naswot").to_dict()["kind"]
'naswot'
>>> try:
...     ProxySpec.from_dict({"epoch": 1})
... except InputError as error:
...     print(error.field)
proxy.epoch
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvit_nas.validate import InputError, check_choice, check_int, check_keys, check_number, shown

if TYPE_CHECKING:
    import torch

KINDS = ("train", "synflow", "naswot", "grad_norm")


@dataclass(frozen=True)
class ProxySpec:
    """How an architecture's accuracy is estimated. Invalid values raise :class:`InputError`.

    ``epochs`` may be fractional (a prefix of one shuffled pass). ``batch_size`` is
    also the batch the zero-cost proxies score.

    Example:

    >>> spec = ProxySpec(kind="synflow")
    >>> ProxySpec.from_dict(spec.to_dict()) == spec
    True
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
        check_choice("--proxy", self.kind, KINDS)
        check_number("--epochs", self.epochs, 0.0, open_low=True)
        check_int("proxy.resolution", self.resolution, 32, 1024)
        check_int("proxy.batch_size", self.batch_size, 2, 65536)
        check_number("proxy.lr", self.lr, 0.0, open_low=True)
        check_number("proxy.weight_decay", self.weight_decay, 0.0)
        check_number("proxy.warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        check_number("proxy.label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_int("proxy.seed", self.seed, 0, 2**63 - 1)
        check_int("proxy.threads", self.threads, 1, 1024)
        # Not a fixed choice: any CUDA device index is allowed.
        if not isinstance(self.device, str) or not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise InputError("proxy.device", f"must be cpu, cuda or cuda:N, got {shown(self.device)}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxySpec:
        """Build from a mapping; missing keys take their defaults, unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**check_keys("proxy", data, names, prefix="proxy."))


@dataclass(frozen=True)
class ProxyResult:
    """A proxy score (higher is better); for ``train`` it is the top-1 accuracy in [0, 1].

    ``weights`` is the trained model's state dict (CPU tensors, timm's layout) for
    ``train``, None for the zero-cost proxies (they train nothing).
    """

    score: float
    accuracy: float | None
    kind: str
    epochs: float
    seconds: float
    train_loss: float | None
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class TrainResult:
    """Final top-1 accuracy, epochs trained, one dict per epoch, the checkpoint file (if any), the trained weights.

    ``weights`` is the final state dict, CPU tensors in timm's layout (what ``model.pt`` holds).
    """

    accuracy: float
    epochs: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)


class TrialFailed(RuntimeError):
    """The architecture could not be scored; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
