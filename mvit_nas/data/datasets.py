"""Proxy datasets: what ``--dataset`` names, and loading it as a train and a held-out split.

Nothing is ever downloaded. ``synthetic`` is generated from a seed (see
:mod:`mvit_nas.data.synthetic`); CIFAR-10/100 and image folders are read from a
local path with torchvision's own readers, after the layout has been checked so
that a wrong path fails at once with an :class:`InputError` naming ``--dataset``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from mvit_nas.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_TRAIN_SIZE,
    SYNTHETIC_VAL_SIZE,
    _cached,
    _resize,
)
from mvit_nas.validate import InputError, check_int, first_line

KINDS = ("synthetic", "cifar10", "cifar100", "folder")
ALLOWED = "synthetic[:SEED], cifar10:PATH, cifar100:PATH or folder:PATH"
FIELD = "--dataset"

# timm's ImageNet statistics: the same normalisation for every dataset keeps the
# models' input scale independent of the dataset choice.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """What ``--dataset`` names: a kind, a local path (real datasets) and a seed (synthetic)."""

    kind: str
    path: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class ProxyData:
    """A train split, a held-out split and the number of classes; items are ``(image, label)``."""

    train: Dataset
    val: Dataset
    num_classes: int
    name: str


class TensorImages(Dataset):
    """Images held as one uint8 tensor ``(N, 3, H, W)``; items come out normalised as float."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0)
        return (image - self._mean) / self._std, int(self.labels[index])


def parse_dataset_spec(text: str) -> DatasetSpec:
    """Parse ``--dataset``: ``synthetic``, ``synthetic:SEED``, ``cifar10:PATH``, ``cifar100:PATH``, ``folder:PATH``.

    Only the syntax is checked here; :func:`load_dataset` checks the path and layout.

    Example:

    >>> parse_dataset_spec("cifar10:~/data")
    DatasetSpec(kind='cifar10', path='~/data', seed=0)
    >>> parse_dataset_spec("synthetic:7").seed
    7
    """
    kind, _, rest = str(text).partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise InputError(FIELD, f"unknown dataset {text!r}; use {ALLOWED}")
    if kind == "synthetic":
        if not rest:
            return DatasetSpec("synthetic")
        try:
            seed = int(rest)
        except ValueError:
            raise InputError(FIELD, f"synthetic seed must be a non-negative integer, got {rest!r}") from None
        if seed < 0:
            raise InputError(FIELD, f"synthetic seed must be a non-negative integer, got {rest!r}")
        return DatasetSpec("synthetic", seed=seed)
    if not rest:
        raise InputError(FIELD, f"{kind} needs a local path: {kind}:PATH (nothing is downloaded)")
    return DatasetSpec(kind, path=rest)


def load_dataset(
    spec: DatasetSpec,
    resolution: int,
    cache_dir: Path | None = None,
    *,
    train_size: int = SYNTHETIC_TRAIN_SIZE,
    val_size: int = SYNTHETIC_VAL_SIZE,
) -> ProxyData:
    """Load (or generate) ``spec`` with images at ``resolution`` x ``resolution``.

    ``train_size`` / ``val_size`` apply to ``synthetic`` only (real datasets bring
    their own splits: CIFAR's test batch, or the folder's ``val/``). ``cache_dir``
    keeps the generated synthetic images across processes (every search worker
    reads the same file instead of generating its own).

    Example::

        data = load_dataset(parse_dataset_spec("folder:/data/flowers"), resolution=64)
        data.num_classes, len(data.train), len(data.val)
    """
    if spec.kind == "synthetic":
        return _load_synthetic(spec.seed, resolution, cache_dir, train_size, val_size)
    if spec.kind in ("cifar10", "cifar100"):
        return _load_cifar(spec, resolution)
    if spec.kind == "folder":
        return _load_folder(spec, resolution)
    raise InputError(FIELD, f"unknown dataset kind {spec.kind!r}; use {ALLOWED}")


# --- real datasets -----------------------------------------------------------------------


class _LocalCIFAR10(CIFAR10):
    # torchvision checks the MD5 of each official batch file; a checksum of None makes
    # it check only that the file exists, so a user's re-packed copy or subset loads too.
    train_list: ClassVar[list] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict] = {**CIFAR10.meta, "md5": None}


class _LocalCIFAR100(CIFAR100):
    train_list: ClassVar[list] = [[name, None] for name, _ in CIFAR100.train_list]
    test_list: ClassVar[list] = [[name, None] for name, _ in CIFAR100.test_list]
    meta: ClassVar[dict] = {**CIFAR100.meta, "md5": None}


def _existing_dir(spec: DatasetSpec) -> Path:
    path = Path(os.path.expanduser(str(spec.path)))
    if not path.exists():
        raise InputError(FIELD, f"{spec.kind} path {str(path)!r} does not exist")
    if not path.is_dir():
        raise InputError(FIELD, f"{spec.kind} path {str(path)!r} is not a directory")
    return path


def _load_cifar(spec: DatasetSpec, resolution: int) -> ProxyData:
    reader = _LocalCIFAR10 if spec.kind == "cifar10" else _LocalCIFAR100
    path = _existing_dir(spec)
    # Accept the batches folder itself or the folder that holds it (torchvision's root).
    root = path.parent if path.name == reader.base_folder else path
    batches = root / reader.base_folder
    needed = [name for name, _ in reader.train_list + reader.test_list] + [reader.meta["filename"]]
    missing = [name for name in needed if not (batches / name).is_file()]
    if missing:
        raise InputError(
            FIELD,
            f"{str(path)!r} is not a {spec.kind} folder: expected {reader.base_folder}/ with "
            f"{', '.join(needed)} (torchvision's python format); missing {', '.join(missing)}",
        )
    train_tf = transforms.Compose(
        [
            transforms.Resize(resolution),
            transforms.RandomCrop(resolution, padding=resolution // 8),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    val_tf = transforms.Compose([transforms.Resize(resolution), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    try:
        train = reader(str(root), train=True, transform=train_tf, download=False)
        val = reader(str(root), train=False, transform=val_tf, download=False)
    except (OSError, ValueError, TypeError, KeyError, EOFError, RuntimeError, pickle.UnpicklingError) as error:
        raise InputError(FIELD, f"cannot read {spec.kind} batches in {str(batches)!r}: {first_line(error)}") from None
    return ProxyData(train, val, len(train.classes), f"{spec.kind}:{root}")


def _class_dirs(split: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(split) if entry.is_dir())
    for name in classes:
        if not any(file.is_file() and file.name.lower().endswith(IMG_EXTENSIONS) for file in (split / name).iterdir()):
            raise InputError(FIELD, f"class folder {str(split / name)!r} holds no image ({', '.join(IMG_EXTENSIONS)})")
    return classes


def _load_folder(spec: DatasetSpec, resolution: int) -> ProxyData:
    path = _existing_dir(spec)
    layout = "PATH/train/<class>/<image> and PATH/val/<class>/<image>"
    splits = {}
    for split in ("train", "val"):
        if not (path / split).is_dir():
            raise InputError(FIELD, f"{str(path)!r} has no {split}/ folder; a folder dataset is {layout}")
        splits[split] = _class_dirs(path / split)
        if not splits[split]:
            raise InputError(FIELD, f"{str(path / split)!r} has no class folders; a folder dataset is {layout}")
    if splits["train"] != splits["val"]:
        only = sorted(set(splits["train"]) ^ set(splits["val"]))
        raise InputError(FIELD, f"train/ and val/ of {str(path)!r} must hold the same class folders; differ in {only}")
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(resolution),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(resolution),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    train = ImageFolder(str(path / "train"), transform=train_tf)
    val = ImageFolder(str(path / "val"), transform=val_tf)
    return ProxyData(train, val, len(train.classes), f"folder:{path}")


def _load_synthetic(seed: int, resolution: int, cache_dir: Path | None, train_size: int, val_size: int) -> ProxyData:
    """The synthetic splits at ``resolution``, from ``cache_dir`` when another process already generated them."""
    check_int("train_size", train_size, 1)
    check_int("val_size", val_size, 1)
    splits = []
    for split, count in (("train", train_size), ("val", val_size)):
        images, labels = _cached(cache_dir, split, count, seed)
        splits.append(TensorImages(_resize(images, resolution), labels))
    return ProxyData(splits[0], splits[1], SYNTHETIC_CLASSES, f"synthetic:{seed}")
