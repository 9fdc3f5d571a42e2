"""Accuracy proxies: short training (the default) and zero-cost scores at initialisation.

This package scores an architecture's accuracy cheaply. :mod:`~mvit_nas.proxy.training`
trains it for a fixed, short budget at a resolution of its own (independent of the
latency resolution) and scores it by top-1 accuracy on the held-out split;
:mod:`~mvit_nas.proxy.zero_cost` scores an untrained network from one batch
(``synflow``, ``naswot``, ``grad_norm``); :mod:`~mvit_nas.proxy.evaluate` picks
one as a :class:`ProxySpec` says; :mod:`~mvit_nas.proxy.weights` reads weight files.

Everything is deterministic for a seed on CPU: the same seed gives bit-identical
scores, in one process or across processes (fixed thread count, deterministic
algorithms, seeded data order, no loader workers).

Example::

    data = load_dataset(parse_dataset_spec("synthetic"), resolution=64)
    result = evaluate_proxy(preset("xxs"), ProxySpec(), data)
    result.score  # top-1 validation accuracy in [0, 1]
"""

import os

from mvit_nas.proxy.evaluate import evaluate_proxy
from mvit_nas.proxy.spec import KINDS, ProxyResult, ProxySpec, TrainResult, TrialFailed
from mvit_nas.proxy.training import CHECKPOINT_FILE, EVAL_BATCH, WEIGHTS_FILE, StepGuard, train
from mvit_nas.proxy.weights import read_state_dict

# Deterministic cuBLAS needs a fixed workspace, read once when CUDA first initialises, so it is
# set on import (before any CUDA work in this process); a value the user set is kept.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

__all__ = [
    "CHECKPOINT_FILE",
    "EVAL_BATCH",
    "KINDS",
    "WEIGHTS_FILE",
    "ProxyResult",
    "ProxySpec",
    "StepGuard",
    "TrainResult",
    "TrialFailed",
    "evaluate_proxy",
    "read_state_dict",
    "train",
]
