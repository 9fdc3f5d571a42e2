"""Zero-cost proxies: scores of an untrained network from a single pass, no training.

- :func:`synflow` (Tanaka et al., 2020): with every weight replaced by its absolute
  value, the network in eval mode (BatchNorm as the affine map of its running
  statistics, as in the SynFlow pruning code) and in float64 (the product of
  absolute weights overflows float32), an all-ones input; the score is
  ``sum |theta * dR/dtheta|`` over conv and linear weights, R the summed output.
- :func:`naswot` (Mellor et al., 2021, the log-det version): the binary code of a
  unit is the sign of its input to each SiLU (SiLU is ReLU-like: the sign says
  which side of the gate the unit is on); the kernel is
  ``K[i, j] = units where images i and j agree`` over a batch; the score is
  ``log|det K|``.
- :func:`grad_norm` (Abdelfattah et al., 2021): the sum over conv and linear layers
  of the L2 norm of the weight gradient of the cross-entropy on one batch.

Example:

>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
>>> synflow(net, 32, torch.device("cpu")) > 0
True
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def synflow(model: nn.Module, resolution: int, device: torch.device) -> float:
    """SynFlow score of ``model`` (left unchanged: a float64 copy with absolute weights is scored)."""
    model = copy.deepcopy(model).double().to(device).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    model.zero_grad()
    model(torch.ones(1, 3, resolution, resolution, dtype=torch.float64, device=device)).sum().backward()
    with torch.no_grad():
        return float(sum((layer.weight * layer.weight.grad).abs().sum() for layer in _weighted_layers(model)))


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of the weight-gradient norms of the cross-entropy on one batch (leaves gradients in ``model``)."""
    model.train()
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    with torch.no_grad():
        return float(
            sum(layer.weight.grad.norm() for layer in _weighted_layers(model) if layer.weight.grad is not None)
        )


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT log-determinant of the SiLU activation-code kernel over the batch ``images``."""
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
