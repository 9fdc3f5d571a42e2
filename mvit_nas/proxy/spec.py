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
MIN_INPUT = 32  # the smallest proxy input: five stride-2 stages leave a 1x1 map


@dataclass(frozen=True)
class ProxySpec:
    """How an architecture's accuracy is estimated. Invalid values raise :class:`InputError`.

    ``epochs`` may be fractional (a prefix of one shuffled pass). ``batch_size`` is
    also the batch the zero-cost proxies score.

    The proxy sees the architecture's resolution: it trains and scores at
    ``scale`` x the architecture's input size (:meth:`input_size`), so a model that
    saves latency by looking at smaller images is scored on smaller images. With
    ``scale=None`` every architecture is scored at ``resolution`` (runs written
    before the scale existed read back that way).

    Example:

    >>> spec = ProxySpec(kind="synflow")
    >>> ProxySpec.from_dict(spec.to_dict()) == spec
    True
    >>> spec.input_size(96), spec.input_size(256), ProxySpec(scale=None).input_size(256)
    (48, 128, 64)
    """

    kind: str = "train"
    epochs: float = 0.25
    resolution: int = 64
    scale: float | None = 0.5
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
        check_int("proxy.resolution", self.resolution, MIN_INPUT, 1024)
        if self.scale is not None:
            check_number("--proxy-scale", self.scale, 0.0, 1.0, open_low=True)
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

    def input_size(self, resolution: int) -> int:
        """The side in px at which an architecture of input size ``resolution`` is trained and scored."""
        if self.scale is None:
            return self.resolution
        return max(MIN_INPUT, round(resolution * self.scale))

    def input_text(self) -> str:
        """Where the proxy looks, in words: ``"0.5 x each architecture's resolution"`` or ``"64 px"``."""
        return f"{self.resolution} px" if self.scale is None else f"{self.scale:g} x each architecture's resolution"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxySpec:
        """Build from a mapping; missing keys take their defaults, unknown keys are an error.

        A mapping without ``scale`` was written before the proxy followed the
        architecture's resolution: it reads back with ``scale=None`` (fixed resolution),
        so a resumed old run keeps scoring the way it started.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        fields = check_keys("proxy", data, names, prefix="proxy.")
        return cls(**{"scale": None, **fields})


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
    resolution: int  # the input size the proxy trained and scored at
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
