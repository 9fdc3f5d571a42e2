"""Proxy datasets: a seeded synthetic task (the default), CIFAR-10/100 and image folders.

This package turns a ``--dataset`` value into a train and a held-out split of
``(image, label)`` items. :mod:`~mvit_nas.data.datasets` parses the value and
reads the real datasets from local paths (nothing is downloaded);
:mod:`~mvit_nas.data.synthetic` generates and caches the synthetic task.

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
    DatasetSpec,
    ProxyData,
    TensorImages,
    load_dataset,
    parse_dataset_spec,
)
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
    "DatasetSpec",
    "ProxyData",
    "TensorImages",
    "generate_synthetic",
    "load_dataset",
    "parse_dataset_spec",
]
