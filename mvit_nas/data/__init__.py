"""Proxy datasets: a seeded synthetic task (the default), CIFAR-10/100 and image folders.

This package turns a ``--dataset`` value into a train, a validation and (real
datasets) a test split of ``(image, label)`` items, each one uint8 tensor that
pickles without a file path. :mod:`~mvit_nas.data.datasets` parses the value,
checks the real datasets' local paths (nothing is downloaded) and holds the
validation split out of train (the test split is never used for selection);
:mod:`~mvit_nas.data.decoded` decodes a real dataset once per resolution and
caches it on the node; :mod:`~mvit_nas.data.synthetic` generates and caches the
synthetic task.

Example::

    spec = parse_dataset_spec("synthetic:1")
    data = load_dataset(spec, resolution=64, cache_dir=Path("run/data"))
    image, label = data.train[0]  # float tensor (3, 64, 64), normalised; int label
"""

from mvit_nas.data.datasets import (
    ALLOWED,
    FIELD,
    KINDS,
    MEAN,
    STD,
    VAL_PERCENT,
    DatasetSpec,
    ProxyData,
    TensorImages,
    held_out,
    load_dataset,
    native_resolution,
    parse_dataset_spec,
)
from mvit_nas.data.decoded import default_cache_dir
from mvit_nas.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_NATIVE,
    SYNTHETIC_TRAIN_SIZE,
    SYNTHETIC_VAL_SIZE,
    generate_synthetic,
)

__all__ = [
    "ALLOWED",
    "FIELD",
    "KINDS",
    "MEAN",
    "STD",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_NATIVE",
    "SYNTHETIC_TRAIN_SIZE",
    "SYNTHETIC_VAL_SIZE",
    "VAL_PERCENT",
    "DatasetSpec",
    "ProxyData",
    "TensorImages",
    "default_cache_dir",
    "generate_synthetic",
    "held_out",
    "load_dataset",
    "native_resolution",
    "parse_dataset_spec",
]
