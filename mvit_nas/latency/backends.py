"""The four ways a model is run for timing: each makes one inference of a model on a fixed input ready to call.

- ``onnxruntime`` (CPU default): the model is exported to ONNX with a fixed
  shape and run by an ONNX Runtime session (CPU provider, ``threads`` intra-op
  threads, sequential, full graph optimisation; the CUDA provider on ``cuda``,
  with the input and output bound to device memory). Eager PyTorch at batch 1 on
  a CPU is bound by per-operator overhead, so its figures reflect the framework
  more than the architecture; ONNX Runtime's fused graph is what a deployment
  runs and what an architecture search should rank by.
- ``eager``: the PyTorch module as is.
- ``cudagraph`` (CUDA default): the forward captured once in a CUDA graph and
  replayed, which removes the kernel-launch overhead that dominates batch-1
  eager latency on a GPU.
- ``compile``: ``torch.compile`` (Inductor); an :class:`InputError` if it cannot
  compile on this machine.

The input may be any (batch, channels, height, width) tensor: an image for a
whole model, a feature map for one block of it.

Example:

>>> from mvit_nas.latency import LatencySpec, prepare
>>> model, x = torch.nn.Conv2d(8, 4, 1).eval(), torch.randn(1, 8, 16, 16)
>>> prepared = prepare(model, x, LatencySpec(backend="eager", threads=1))
>>> prepared.run().shape
torch.Size([1, 4, 16, 16])
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvit_nas.latency.onnx import IMAGE_CHANNELS, INPUT_NAME, OUTPUT_NAME, export_onnx, ort_session
from mvit_nas.latency.spec import LatencySpec
from mvit_nas.validate import InputError, first_line


@dataclass(frozen=True)
class Prepared:
    """A model made ready to run under one backend."""

    run: Callable[[], object]  # one inference: what is timed
    forward: Callable[[], object] | None  # one PyTorch forward whose peak memory is the backend's; None: unknown


def _prepare_eager(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> Prepared:
    def forward() -> object:
        return model(x)

    return Prepared(forward, forward)


def _prepare_onnxruntime(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> Prepared:
    batch, channels, height, width = x.shape
    # An image keeps the exporter's default input; a feature map (one block alone) names its channels.
    shape = {} if channels == IMAGE_CHANNELS else {"channels": channels}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        export_onnx(model, path, height, width, batch, dynamic_batch=False, **shape)
        session = ort_session(path, spec)  # the session holds the graph; the file may go
    if spec.device == "cpu":
        feed = {INPUT_NAME: x.numpy()}
        return Prepared(lambda: session.run(None, feed), None)
    # Bind device memory so that a run times the model, not host<->device copies.
    binding = session.io_binding()
    element_type = np.float16 if spec.dtype == "float16" else np.float32
    binding.bind_input(INPUT_NAME, "cuda", x.device.index or 0, element_type, tuple(x.shape), x.data_ptr())
    binding.bind_output(OUTPUT_NAME, "cuda", x.device.index or 0)
    return Prepared(lambda: session.run_with_iobinding(binding), None)


def _prepare_cudagraph(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> Prepared:
    with torch.inference_mode():
        # Warm up on a side stream (cuDNN autotuning, lazy allocations) so that none of it is captured.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
    # Capture records exactly the allocations of one eager forward into the graph's pool.
    return Prepared(graph.replay, lambda: model(x))


def _prepare_compile(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> Prepared:
    # Dynamo caches per code object and falls back to eager after a few recompiles of
    # MobileViT.forward; a search compiles many architectures, so start clean each time.
    torch.compiler.reset()
    compiled = torch.compile(model, dynamic=False)
    try:
        with torch.inference_mode():
            compiled(x)  # compilation happens here, outside the timed region
    except Exception as error:  # Dynamo/Inductor failures come in many types (no compiler, unsupported op, ...)
        reason = f"{type(error).__name__}: {first_line(error)}"
        raise InputError("--backend", f"compile is not available here: {reason}") from error

    def forward() -> object:
        return compiled(x)

    return Prepared(forward, forward)


_BACKENDS: dict[str, Callable[[nn.Module, torch.Tensor, LatencySpec], Prepared]] = {
    "eager": _prepare_eager,
    "onnxruntime": _prepare_onnxruntime,
    "cudagraph": _prepare_cudagraph,
    "compile": _prepare_compile,
}


def prepare(model: nn.Module, x: torch.Tensor, spec: LatencySpec) -> Prepared:
    """``model`` (already on the spec's device and dtype, in eval mode) made ready to run on ``x`` by ``spec.backend``.

    Exporting, compiling or capturing happens here, once; call it outside inference mode
    (the ONNX exporter traces) and under the spec's thread count.
    """
    return _BACKENDS[spec.backend](model, x, spec)
