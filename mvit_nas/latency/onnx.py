"""The project's one ONNX exporter (:func:`export_onnx`) and the ONNX Runtime session every measurement runs.

Whole models (a 3-channel image in) and single blocks (a feature map in) go
through the same exporter and the same session options, so a block timed alone
runs as it runs inside the model.

Example::

    path = export_onnx(build_model(preset("xxs")), "xxs.onnx", 256, 256)
    session = ort_session(path, LatencySpec(threads=2))
    (logits,) = session.run(None, {INPUT_NAME: image.numpy()})
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mvit_nas.latency.spec import LatencySpec

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
IMAGE_CHANNELS = 3


def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int,
    width: int,
    batch_size: int = 1,
    *,
    channels: int = IMAGE_CHANNELS,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export ``model`` in eval mode (each module's training flag is restored after) to one ONNX file.

    Input ``input`` of shape (batch, channels, height, width) on the model's device and
    dtype (``channels`` is 3 for an image; a block of the network takes a feature map),
    output ``logits``; opset 18. With ``dynamic_batch`` the batch axis is symbolic,
    otherwise fixed at ``batch_size`` (ONNX Runtime then folds every shape computation
    and fuses MatMul+Add into Gemm: faster, so latency measurement uses it).

    The default is the TorchScript exporter (``dynamo=False``): on torch 2.14 and a
    2-core CPU it exports a MobileViT in 2-3 s, the ``torch.export``-based exporter
    in 15-20 s (most of it decompositions), and once ONNX Runtime has optimised
    them the two graphs hold the same fused operators (Conv, Gemm, FusedMatMul,
    Softmax, LayerNormalization; dynamo's has a few more Reshapes) with equal
    outputs and, within noise, equal speed. A search exports once per trial, so
    the faster exporter wins; ``dynamo=True`` stays available for when the
    TorchScript exporter is retired. Both exporters' warnings are silenced.

    Example::

        export_onnx(build_model(preset("xxs")), "xxs.onnx", 256, 256)
        export_onnx(block_module(block), "block.onnx", 32, 32, channels=64, dynamic_batch=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parameter = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    example = torch.zeros(batch_size, channels, height, width, device=device, dtype=dtype)
    names: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": ONNX_OPSET}
    if dynamo:
        shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
        options = {"dynamo": True, "dynamic_shapes": shapes, "external_data": False, "verbose": False}
    else:
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        options = {"dynamo": False, "dynamic_axes": axes if dynamic_batch else None}
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with warnings.catch_warnings():
            # Deprecation notices and TracerWarnings about shapes baked in as constants (H and W are fixed).
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), **names, **options)
    finally:
        for module, training in modes.items():
            module.training = training
    return path


def ort_session(path_or_bytes: str | Path | bytes, spec: LatencySpec) -> InferenceSession:
    """An ONNX Runtime session for the model at ``path_or_bytes`` (a file or its serialised bytes) under ``spec``.

    ``spec.threads`` intra-op threads, one inter-op thread, sequential execution, every
    graph optimisation, errors-only logging, thread spinning off; the CPU provider, or the
    CUDA provider on ``--device cuda`` (the current CUDA device).

    Spinning (ONNX Runtime's default) keeps idle threads busy-waiting for the next op: on a
    machine where anything else runs (another trial's training, the driver, Ray's daemons)
    they steal its cores and are robbed in turn. MobileViT-XS at 160 px beside one proxy
    training measured 24-31 ms with spinning and 9.9-10.8 ms without (2 threads, 2 cores).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: constant-folding notes are not the user's concern
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
    if spec.device == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": torch.cuda.current_device()})]
    else:
        providers = ["CPUExecutionProvider"]
    model = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(model, options, providers=providers)
