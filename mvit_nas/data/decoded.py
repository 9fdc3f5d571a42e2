"""Real datasets (CIFAR-10/100, image folders) decoded once per resolution into uint8 tensors, cached on this node.

Every image, train and test alike, is decoded with the evaluation transform: the
shorter side resized to R and the centre R x R cropped (PIL, antialiased
bilinear; CIFAR's square 32 px images are resized as one tensor batch, and kept
as they are at 32 px). A split becomes one uint8 tensor ``(N, 3, R, R)`` and an
int64 label tensor: no file path, so it pickles (to Ray workers on other nodes)
at about ``N * 3 * R * R`` bytes.

The result is kept in a node-local cache folder (default
``$XDG_CACHE_HOME/mvit-nas/datasets``, else ``~/.cache/mvit-nas/datasets``)
under a name keyed by the dataset's absolute path, a fingerprint of its files
(count, total size, latest mtime) and R, written atomically. A changed dataset
gets a new name and is decoded again; old files are left for the user to delete.
An unreadable cache file is decoded again; an unwritable cache folder only costs
the decoding next time.

Example:

>>> default_cache_dir().parts[-2:]
('mvit-nas', 'datasets')
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from mvit_nas.atomic import atomic_path
from mvit_nas.data.synthetic import _resize
from mvit_nas.validate import first_line

log = logging.getLogger(__name__)

# Bump when decoding changes: cache files written by an older decoder are then never read.
DECODE_VERSION = 1
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, EOFError, RuntimeError, pickle.UnpicklingError)
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableDataset(Exception):
    """A dataset file that cannot be read or decoded; the message names the file."""


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


CIFAR_READERS: dict[str, type[CIFAR10]] = {"cifar10": _LocalCIFAR10, "cifar100": _LocalCIFAR100}


@dataclass(frozen=True)
class Decoded:
    """A real dataset's two on-disk splits at one resolution: uint8 images ``(N, 3, R, R)``, int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]

    def fits(self, resolution: int) -> bool:
        """Whether the tensors have the shapes and types of a dataset decoded at ``resolution``."""
        pairs = ((self.train_images, self.train_labels), (self.test_images, self.test_labels))
        return all(
            images.dtype == torch.uint8
            and images.shape[1:] == (3, resolution, resolution)
            and labels.shape == (len(images),)
            and not labels.is_floating_point()
            for images, labels in pairs
        )


def default_cache_dir() -> Path | None:
    """The node-local folder for decoded datasets; None where there is no home folder to put it in."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "mvit-nas" / "datasets"


def cifar_files(kind: str) -> list[str]:
    """The file names a ``kind`` (cifar10 or cifar100) batches folder must hold: train, test, meta."""
    reader = CIFAR_READERS[kind]
    return [name for name, _ in reader.train_list + reader.test_list] + [reader.meta["filename"]]


def load_cifar(kind: str, root: Path, resolution: int, cache_dir: Path | None) -> Decoded:
    """CIFAR ``kind`` from torchvision's ``root`` (the folder holding the batches folder), at ``resolution``."""
    reader = CIFAR_READERS[kind]
    batches = root / reader.base_folder
    fingerprint = _fingerprint(batches / name for name in cifar_files(kind))
    return _cached(kind, root, resolution, cache_dir, fingerprint, lambda: _decode_cifar(kind, root, resolution))


def load_folder(path: Path, resolution: int, cache_dir: Path | None) -> Decoded:
    """The image folder ``path`` (``train/<class>/*`` and ``val/<class>/*``) at ``resolution``."""
    fingerprint = _fingerprint((path / "train", path / "val"))
    return _cached("folder", path, resolution, cache_dir, fingerprint, lambda: _decode_folder(path, resolution))


# --- the cache -----------------------------------------------------------------------------


def _fingerprint(paths: Iterable[Path]) -> tuple[int, int, int]:
    """(file count, total bytes, latest mtime in ns) of the files under ``paths`` and of their folders."""
    count = size = latest = 0
    for root in paths:
        if not root.is_dir():
            stat = root.stat()
            count, size, latest = count + 1, size + stat.st_size, max(latest, stat.st_mtime_ns)
            continue
        # followlinks: torchvision's ImageFolder follows links too, so the fingerprint sees what it reads.
        for folder, _, files in os.walk(root, followlinks=True):
            latest = max(latest, os.stat(folder).st_mtime_ns)  # a renamed or removed file changes it
            for name in files:
                try:
                    stat = os.stat(os.path.join(folder, name))
                except OSError:  # a dangling link: decoding names it if it is an image
                    continue
                count, size, latest = count + 1, size + stat.st_size, max(latest, stat.st_mtime_ns)
    return count, size, latest


def _cache_file(kind: str, path: Path, resolution: int, cache_dir: Path, fingerprint: tuple[int, ...]) -> Path:
    key = repr((DECODE_VERSION, kind, str(path.resolve()), fingerprint, resolution))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name)[:40]
    return cache_dir / f"{kind}-{label}-{digest}-{resolution}px.pt"


def _cached(
    kind: str,
    path: Path,
    resolution: int,
    cache_dir: Path | None,
    fingerprint: tuple[int, ...],
    decode: Callable[[], Decoded],
) -> Decoded:
    """The cached decoding of ``path`` at ``resolution`` when its fingerprint matches, else ``decode()`` (kept)."""
    file = _cache_file(kind, path, resolution, cache_dir, fingerprint) if cache_dir is not None else None
    if file is not None and file.is_file():
        try:
            stored = torch.load(file, weights_only=True)
            decoded = Decoded(**{**stored, "classes": tuple(stored["classes"])})
            if decoded.fits(resolution):
                return decoded
        except (*READ_ERRORS, AttributeError):
            pass
        log.warning("the cached %s is unreadable; decoding %s again", file, path)
    log.info("decoding %s at %d px (once: kept in %s)", path, resolution, file.parent if file else "no cache")
    decoded = decode()
    if file is not None:
        # Concurrent processes may read the file while another writes it: they must never see half of it.
        try:
            with atomic_path(file) as tmp:
                torch.save({**asdict(decoded), "classes": list(decoded.classes)}, tmp)
        except OSError as error:
            log.warning("cannot keep the decoded %s in %s: %s", path, file.parent, first_line(error))
    return decoded


# --- decoding ------------------------------------------------------------------------------


def _decode_cifar(kind: str, root: Path, resolution: int) -> Decoded:
    reader = CIFAR_READERS[kind]
    try:
        train = reader(str(root), train=True, download=False)
        test = reader(str(root), train=False, download=False)
    except READ_ERRORS as error:
        batches = root / reader.base_folder
        raise UnreadableDataset(f"cannot read {kind} batches in {str(batches)!r}: {first_line(error)}") from None

    def images(data: np.ndarray) -> torch.Tensor:  # (N, 32, 32, 3) as torchvision reads it
        return _resize(torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2))), resolution)

    return Decoded(
        images(train.data),
        torch.tensor(train.targets, dtype=torch.int64),
        images(test.data),
        torch.tensor(test.targets, dtype=torch.int64),
        tuple(train.classes),
    )


def _decode_folder(path: Path, resolution: int) -> Decoded:
    # ImageFolder only lists the files (sorted classes, sorted files, image extensions); nothing is read here.
    train = ImageFolder(str(path / "train"))
    test = ImageFolder(str(path / "val"))
    train_images, train_labels = _decode_images(train.samples, resolution)
    test_images, test_labels = _decode_images(test.samples, resolution)
    return Decoded(train_images, train_labels, test_images, test_labels, tuple(train.classes))


def _decode_images(samples: Sequence[tuple[str, int]], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The listed images, each resized (shorter side) and centre-cropped to ``resolution``, and their labels."""
    fit = transforms.Compose(
        [transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.PILToTensor()]
    )
    images = torch.empty((len(samples), 3, resolution, resolution), dtype=torch.uint8)
    for index, (file, _) in enumerate(samples):
        try:
            with Image.open(file) as image:
                images[index] = fit(image.convert("RGB"))
        except IMAGE_ERRORS as error:
            raise UnreadableDataset(f"cannot read image {file!r}: {first_line(error)}") from None
    return images, torch.tensor([label for _, label in samples], dtype=torch.int64)
