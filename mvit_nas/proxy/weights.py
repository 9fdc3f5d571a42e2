"""Weight files: the one reader of state dicts from disk, and loading timm-layout weights into a model.

Example::

    weights = read_state_dict("mobilevit_xxs.safetensors")
    result = train(cfg, data, 10, 64, init_state_dict=weights)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvit_nas.model import from_timm
from mvit_nas.validate import InputError, first_line

log = logging.getLogger(__name__)

# Training checkpoints commonly wrap the state dict under one of these keys.
WRAPPER_KEYS = ("state_dict", "model")


def read_state_dict(path: str | Path, flag: str = "--init") -> dict[str, torch.Tensor]:
    """Read a weights file: safetensors, or a torch file holding a state dict.

    A torch file may wrap the state dict as ``{"state_dict": ...}`` or ``{"model": ...}``
    (common training checkpoints). Only tensors are loaded (``weights_only``). Errors
    are :class:`InputError` naming ``flag``, the option the path came from.

    Example::

        result = train(cfg, data, 10, 64, init_state_dict=read_state_dict("mobilevit_xxs.safetensors"))
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(flag, f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and safetensors readers each raise their own types
        raise InputError(flag, f"cannot read weights from {str(path)!r}: {first_line(error)}") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(flag, f"{str(path)!r} does not hold a state dict of tensors")
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
