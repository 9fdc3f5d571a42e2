"""Proxy datasets: what ``--dataset`` names, and loading it as a train, a validation and a test split.

Nothing is ever downloaded. ``synthetic`` is generated from a seed (see
:mod:`mvit_nas.data.synthetic`); CIFAR-10/100 and image folders are read from a
local path, after the layout has been checked so that a wrong path fails at once
with an :class:`InputError` naming ``--dataset``, and are decoded once per
resolution into uint8 tensors kept in a node-local cache (see
:mod:`mvit_nas.data.decoded`). Every split is a :class:`TensorImages`: no file
path inside, so a loaded :class:`ProxyData` can be pickled to another node.

Splits of the real datasets: ``val``, the split a search selects on, is held out
from the TRAIN split: ``VAL_PERCENT`` of each class (at least one image, never a
class's only image), drawn with the spec's seed (0 by default), and removed from
``train``. The dataset's own held-out split (CIFAR's test batch, a folder's
``val/``) is ``ProxyData.test``, for reporting only: it is never used for
selection. ``train`` is augmented (random crop with ``R // 8`` zero padding and
a horizontal flip, drawn from torch's global RNG); ``val`` and ``test`` are not.
``synthetic`` has a generated ``train`` and ``val``, no ``test``, and no
augmentation.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from mvit_nas.data.decoded import (
    CIFAR_READERS,
    Decoded,
    UnreadableDataset,
    cifar_files,
    default_cache_dir,
    load_cifar,
    load_folder,
)
from mvit_nas.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_NATIVE,
    SYNTHETIC_TRAIN_SIZE,
    SYNTHETIC_VAL_SIZE,
    _cached,
    _resize,
)
from mvit_nas.validate import InputError, check_int, first_line

KINDS = ("synthetic", "cifar10", "cifar100", "folder")
ALLOWED = "synthetic[:SEED], cifar10:PATH, cifar100:PATH or folder:PATH"
FIELD = "--dataset"
# The share of each class of a real dataset's train split held out as the validation split.
VAL_PERCENT = 10
CIFAR_NATIVE = 32

# timm's ImageNet statistics: the same normalisation for every dataset keeps the
# models' input scale independent of the dataset choice.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """What ``--dataset`` names: a kind, a local path (real datasets) and a seed.

    The seed draws the synthetic images, or which train images of a real dataset are held out for validation.
    """

    kind: str
    path: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class ProxyData:
    """A dataset's splits, its number of classes and its name; items are ``(image, label)``.

    ``val`` is the split to select on; ``test`` is a real dataset's own held-out
    split, for reporting only (None for ``synthetic``). Every split is a
    :class:`TensorImages`.
    """

    train: TensorImages
    val: TensorImages
    num_classes: int
    name: str
    test: TensorImages | None = None

    def at(self, resolution: int) -> ProxyData:
        """The same images served at ``resolution`` x ``resolution`` (resampled per item; no copy is stored).

        The proxy trains each architecture at its own input size from one loaded
        dataset: one uint8 tensor in memory, however many resolutions the search visits.

        >>> images = TensorImages(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]))
        >>> ProxyData(images, images, 2, "demo").at(48).val[0][0].shape
        torch.Size([3, 48, 48])
        """
        test = None if self.test is None else self.test.at(resolution)
        return dataclasses.replace(self, train=self.train.at(resolution), val=self.val.at(resolution), test=test)


class TensorImages(Dataset):
    """Images held as one uint8 tensor ``(N, 3, H, W)``; items come out normalised as float.

    With ``augment`` (train splits of real datasets) each item is first randomly
    cropped from the image zero-padded by ``min(H, W) // 8`` on every side and
    flipped left-right half the time, drawn from torch's global RNG (seeded by the
    trainer, so a run stays deterministic). With ``size`` each item is then
    resampled to ``size`` x ``size`` (antialiased bilinear); see :meth:`at`.

    Example:

    >>> split = TensorImages(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), augment=True)
    >>> image, label = split[1]
    >>> image.shape, image.dtype, label
    (torch.Size([3, 8, 8]), torch.float32, 1)
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False, size: int | None = None
    ) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment
        self.size = None if size == images.shape[-1] == images.shape[-2] else size
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    @property
    def side(self) -> int:
        """The side in px of the square images this split serves."""
        return self.size or int(self.images.shape[-1])

    def at(self, size: int) -> TensorImages:
        """The same images (shared, not copied), served at ``size`` x ``size``."""
        return TensorImages(self.images, self.labels, self.augment, size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            image = _crop_and_flip(image)
        image = image.to(torch.float32, copy=True).div_(255.0)  # copy: never scale the stored images
        if self.size is not None:
            size = (self.size, self.size)
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        return (image - self._mean) / self._std, int(self.labels[index])


def _crop_and_flip(image: torch.Tensor) -> torch.Tensor:
    """A random crop of ``image`` (C, H, W) zero-padded by ``min(H, W) // 8``, flipped left-right half the time."""
    height, width = image.shape[-2:]
    pad = min(height, width) // 8
    if pad:
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        padded = image.new_zeros((image.shape[0], height + 2 * pad, width + 2 * pad))
        padded[:, pad : pad + height, pad : pad + width] = image
        image = padded[:, top : top + height, left : left + width]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image


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


def native_resolution(spec: DatasetSpec) -> int | None:
    """The side in px a dataset's images come in (None for image folders: any size).

    >>> native_resolution(parse_dataset_spec("synthetic")), native_resolution(DatasetSpec("cifar10", "x"))
    (64, 32)
    """
    return {"synthetic": SYNTHETIC_NATIVE, "cifar10": CIFAR_NATIVE, "cifar100": CIFAR_NATIVE}.get(spec.kind)


def load_dataset(
    spec: DatasetSpec,
    resolution: int,
    cache_dir: Path | None = None,
    *,
    train_size: int = SYNTHETIC_TRAIN_SIZE,
    val_size: int = SYNTHETIC_VAL_SIZE,
) -> ProxyData:
    """Load (or generate) ``spec`` with images at ``resolution`` x ``resolution``.

    ``train_size`` / ``val_size`` apply to ``synthetic`` only (a real dataset's
    validation split is ``VAL_PERCENT`` of its train split; its own held-out split
    is ``test``). ``cache_dir`` keeps the generated synthetic images, or the
    decoded real ones, across processes (every search worker on a node reads the
    same file instead of making its own); real datasets use
    :func:`~mvit_nas.data.decoded.default_cache_dir` when it is None.

    Example::

        data = load_dataset(parse_dataset_spec("folder:/data/flowers"), resolution=64)
        data.num_classes, len(data.train), len(data.val), len(data.test)
    """
    if spec.kind == "synthetic":
        return _load_synthetic(spec.seed, resolution, cache_dir, train_size, val_size)
    decoded_cache = cache_dir if cache_dir is not None else default_cache_dir()
    if spec.kind in ("cifar10", "cifar100"):
        return _load_cifar(spec, resolution, decoded_cache)
    if spec.kind == "folder":
        return _load_folder(spec, resolution, decoded_cache)
    raise InputError(FIELD, f"unknown dataset kind {spec.kind!r}; use {ALLOWED}")


# --- real datasets -----------------------------------------------------------------------


def _existing_dir(spec: DatasetSpec) -> Path:
    path = Path(os.path.expanduser(str(spec.path)))
    if not path.exists():
        raise InputError(FIELD, f"{spec.kind} path {str(path)!r} does not exist")
    if not path.is_dir():
        raise InputError(FIELD, f"{spec.kind} path {str(path)!r} is not a directory")
    return path


def _load_cifar(spec: DatasetSpec, resolution: int, cache_dir: Path | None) -> ProxyData:
    reader = CIFAR_READERS[spec.kind]
    path = _existing_dir(spec)
    # Accept the batches folder itself or the folder that holds it (torchvision's root).
    root = path.parent if path.name == reader.base_folder else path
    batches = root / reader.base_folder
    needed = cifar_files(spec.kind)
    missing = [name for name in needed if not (batches / name).is_file()]
    if missing:
        raise InputError(
            FIELD,
            f"{str(path)!r} is not a {spec.kind} folder: expected {reader.base_folder}/ with "
            f"{', '.join(needed)} (torchvision's python format); missing {', '.join(missing)}",
        )
    try:
        decoded = load_cifar(spec.kind, root, resolution, cache_dir)
    except UnreadableDataset as error:
        raise InputError(FIELD, first_line(error)) from None
    return _split(decoded, spec.seed, f"{spec.kind}:{root}")


def _class_dirs(split: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(split) if entry.is_dir())
    for name in classes:
        if not any(file.is_file() and file.name.lower().endswith(IMG_EXTENSIONS) for file in (split / name).iterdir()):
            raise InputError(FIELD, f"class folder {str(split / name)!r} holds no image ({', '.join(IMG_EXTENSIONS)})")
    return classes


def _load_folder(spec: DatasetSpec, resolution: int, cache_dir: Path | None) -> ProxyData:
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
    try:
        decoded = load_folder(path, resolution, cache_dir)
    except UnreadableDataset as error:
        raise InputError(FIELD, first_line(error)) from None
    return _split(decoded, spec.seed, f"folder:{path}")


def held_out(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Sorted indices of the validation split: ``VAL_PERCENT`` of each class, drawn with ``seed``.

    At least one image of each class, but never a class's only image (it stays in train).

    Example:

    >>> held_out(torch.tensor([0] * 20 + [1] * 3 + [2]), seed=0).tolist()
    [4, 5, 20]
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        count = min(len(members) - 1, max(1, len(members) * VAL_PERCENT // 100))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.int64)


def _split(decoded: Decoded, seed: int, name: str) -> ProxyData:
    """Train (augmented) and validation (held out from train) splits, and the dataset's own split as test."""
    val_index = held_out(decoded.train_labels, seed)
    if not len(val_index):
        raise InputError(
            FIELD,
            f"{name}: every class of the train split has a single image; holding out a validation split "
            "from train needs at least 2 images in a class",
        )
    keep = torch.ones(len(decoded.train_labels), dtype=torch.bool)
    keep[val_index] = False
    # Indexing with tensors copies: each split owns its images (and pickles only those).
    train = TensorImages(decoded.train_images[keep], decoded.train_labels[keep], augment=True)
    val = TensorImages(decoded.train_images[val_index], decoded.train_labels[val_index])
    test = TensorImages(decoded.test_images, decoded.test_labels)
    return ProxyData(train, val, len(decoded.classes), name, test=test)


def _load_synthetic(seed: int, resolution: int, cache_dir: Path | None, train_size: int, val_size: int) -> ProxyData:
    """The synthetic splits at ``resolution``, from ``cache_dir`` when another process already generated them."""
    check_int("train_size", train_size, 1)
    check_int("val_size", val_size, 1)
    splits = []
    for split, count in (("train", train_size), ("val", val_size)):
        images, labels = _cached(cache_dir, split, count, seed)
        splits.append(TensorImages(_resize(images, resolution), labels))
    return ProxyData(splits[0], splits[1], SYNTHETIC_CLASSES, f"synthetic:{seed}")
