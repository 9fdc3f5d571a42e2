"""Proxy datasets: real layouts decode once into cached tensors, val is held out of train, bad input names
--dataset, synthetic is seeded."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mvit_nas.data import (
    SYNTHETIC_CLASSES,
    DatasetSpec,
    ProxyData,
    TensorImages,
    default_cache_dir,
    generate_synthetic,
    held_out,
    load_dataset,
    parse_dataset_spec,
)
from mvit_nas.validate import InputError

RESOLUTION = 32


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default dataset cache of each test is its own (never the user's ~/.cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache"


def _pickle(path: Path, payload: dict[str, object]) -> None:
    with path.open("wb") as handle:
        pickle.dump(payload, handle)


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)


def make_cifar10(root: Path, per_batch: int = 4) -> Path:
    """torchvision's on-disk CIFAR-10: pickled dicts of flat uint8 rows and labels, plus batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        labels = [(index + i) % 10 for i in range(per_batch)]
        _pickle(folder / name, {"data": _images(per_batch, index), "labels": labels})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return root


def make_cifar100(root: Path, count: int = 6) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for index, name in enumerate(("train", "test")):
        fine = [(7 * (i // 2) + index) % 100 for i in range(count)]  # two images a class: one can be held out
        _pickle(folder / name, {"data": _images(count, index), "fine_labels": fine, "coarse_labels": [0] * count})
    _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return root


def make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "emu"), per_class: int = 2) -> Path:
    """Noise images of a few sizes, PNG and JPEG, in ``train/<class>`` and ``val/<class>``."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.{('png', 'jpg')[index % 2]}")
    return root


def make_coded_folder(root: Path, train: dict[str, int], val: int = 2) -> Path:
    """Solid-colour PNGs (of a few shapes) whose red value is a code unique to the file, green the class."""
    code = 0
    for split in ("train", "val"):
        for label, (name, count) in enumerate(train.items()):
            (root / split / name).mkdir(parents=True)
            for index in range(count if split == "train" else val):
                code += 1
                pixels = np.full((30 + index % 3 * 7, 36, 3), (code, 10 * label, 0), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index:03d}.png")
    return root


def _codes(split: TensorImages) -> list[int]:
    return split.images[:, 0, RESOLUTION // 2, RESOLUTION // 2].tolist()


def _check_items(data: ProxyData, classes: int) -> None:
    assert data.num_classes == classes
    for split in (data.train, data.val) if data.test is None else (data.train, data.val, data.test):
        assert isinstance(split, TensorImages) and split.images.dtype == torch.uint8
        image, label = split[0]
        assert image.shape == (3, RESOLUTION, RESOLUTION) and image.dtype == torch.float32
        assert 0 <= int(label) < classes
    assert data.train.augment and not data.val.augment and (data.test is None or not data.test.augment)


# --- real layouts ------------------------------------------------------------------------


def test_cifar10_loads_from_root_or_batches_folder(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path)
    for path in (root, root / "cifar-10-batches-py"):
        data = load_dataset(parse_dataset_spec(f"cifar10:{path}"), RESOLUTION)
        # 20 train images in 8 classes, 2 of them with a single image (never held out): 6 for val.
        assert (len(data.train), len(data.val), len(data.test)) == (14, 6, 4)
        _check_items(data, 10)
    # Both spellings of the path share one cache file, in the default cache folder.
    assert len(list(default_cache_dir().glob("cifar10-*.pt"))) == 1


def test_cifar100_loads(tmp_path: Path) -> None:
    data = load_dataset(parse_dataset_spec(f"cifar100:{make_cifar100(tmp_path)}"), RESOLUTION)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 6)
    _check_items(data, 100)


def test_image_folder_loads(tmp_path: Path) -> None:
    data = load_dataset(parse_dataset_spec(f"folder:{make_folder(tmp_path)}"), RESOLUTION)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 6)
    _check_items(data, 3)


def test_cifar_at_another_resolution(tmp_path: Path) -> None:
    data = load_dataset(parse_dataset_spec(f"cifar10:{make_cifar10(tmp_path)}"), 48)
    assert data.train.images.shape[1:] == data.test.images.shape[1:] == (3, 48, 48)


# --- decoded once, cached, picklable ---------------------------------------------------------


def test_folder_is_tensors_that_pickle_without_paths(tmp_path: Path) -> None:
    root = make_coded_folder(tmp_path / "images", {"cat": 8, "dog": 8, "emu": 4}, val=3)
    data = load_dataset(parse_dataset_spec(f"folder:{root}"), RESOLUTION, cache_dir=tmp_path / "cache")
    splits = (data.train, data.val, data.test)
    for split in splits:
        blob = pickle.dumps(split)
        assert str(root).encode() not in blob and b".png" not in blob
    pixels = sum(len(split) for split in splits) * 3 * RESOLUTION * RESOLUTION
    assert pixels <= len(pickle.dumps(data)) < pixels * 1.05 + 8_000
    again = pickle.loads(pickle.dumps(data))
    assert torch.equal(again.train.images, data.train.images) and again.train.augment


def test_second_load_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "images")
    spec = parse_dataset_spec(f"folder:{root}")
    first = load_dataset(spec, RESOLUTION, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.name.startswith("folder-images-") and cached.name.endswith(f"-{RESOLUTION}px.pt")

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_decoding)
        second = load_dataset(spec, RESOLUTION, cache_dir=tmp_path / "cache")
    for mine, theirs in zip((first.train, first.val, first.test), (second.train, second.val, second.test), strict=True):
        assert torch.equal(mine.images, theirs.images) and torch.equal(mine.labels, theirs.labels)
    # Another resolution is decoded (and cached) on its own.
    assert load_dataset(spec, 16, cache_dir=tmp_path / "cache").test.images.shape[-1] == 16
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_changed_or_unreadable_cache_is_decoded_again(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images")
    spec = parse_dataset_spec(f"folder:{root}")
    assert len(load_dataset(spec, RESOLUTION).test) == 6  # the default cache folder
    (cached,) = default_cache_dir().iterdir()
    cached.write_bytes(b"half a file")
    assert len(load_dataset(spec, RESOLUTION).test) == 6
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "cat" / "new.png")
    assert len(load_dataset(spec, RESOLUTION).test) == 7
    assert len(list(default_cache_dir().iterdir())) == 2  # the old fingerprint's file is left, not reused


def test_unreadable_image_names_dataset(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"broken\.jpg") as caught:
        load_dataset(parse_dataset_spec(f"folder:{root}"), RESOLUTION)
    assert caught.value.field == "--dataset"
    assert "\n" not in str(caught.value)


# --- splits ----------------------------------------------------------------------------------


def test_val_is_held_out_of_train_and_test_is_the_folders_val(tmp_path: Path) -> None:
    counts = {"cat": 20, "dog": 10, "emu": 2}
    root = make_coded_folder(tmp_path / "images", counts, val=2)
    data = load_dataset(parse_dataset_spec(f"folder:{root}"), RESOLUTION)
    train, val, test = _codes(data.train), _codes(data.val), _codes(data.test)
    train_files = sum(counts.values())
    # Train and val split the folder's train/ (codes 1..32) between them; test is its val/ (codes 33..38).
    assert sorted(train + val) == list(range(1, train_files + 1))
    assert sorted(test) == list(range(train_files + 1, train_files + 7))
    # 10% of each class, at least one.
    assert torch.bincount(data.val.labels, minlength=3).tolist() == [2, 1, 1]
    # Labels travel with their images (green is 10 * class).
    for split in (data.train, data.val, data.test):
        assert torch.equal(split.images[:, 1, 0, 0].long(), 10 * split.labels)
    # Seeded: the same seed holds out the same images, another seed others.
    assert _codes(load_dataset(DatasetSpec("folder", str(root), seed=0), RESOLUTION).val) == val
    assert _codes(load_dataset(DatasetSpec("folder", str(root), seed=1), RESOLUTION).val) != val


def test_held_out_is_class_balanced() -> None:
    labels = torch.arange(1000) % 7
    index = held_out(labels, seed=3)
    assert torch.bincount(labels[index]).tolist() == [14] * 7
    assert len(set(index.tolist())) == len(index) and torch.equal(index, held_out(labels, seed=3))


def test_single_image_classes_cannot_be_held_out(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_class=1)
    with pytest.raises(InputError, match="single image") as caught:
        load_dataset(parse_dataset_spec(f"folder:{root}"), RESOLUTION)
    assert caught.value.field == "--dataset"


def test_train_augmentation_is_seeded_by_the_global_rng(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "images", per_class=4)
    data = load_dataset(parse_dataset_spec(f"folder:{root}"), RESOLUTION)
    plain = TensorImages(data.train.images, data.train.labels)
    torch.manual_seed(0)
    first = [data.train[i][0] for i in range(len(data.train))]
    torch.manual_seed(0)
    assert all(torch.equal(image, data.train[i][0]) for i, image in enumerate(first))
    assert any(not torch.equal(image, plain[i][0]) for i, image in enumerate(first))


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["imagenet:/data", "", "cifar10", "cifar100:", "folder", "synthetic:x", "synthetic:-1"]
)
def test_bad_spec_names_dataset_flag(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_dataset_spec(text)
    assert caught.value.field == "--dataset"
    assert "\n" not in str(caught.value)


def test_unknown_kind_in_a_spec_record() -> None:
    with pytest.raises(InputError, match="--dataset"):
        load_dataset(DatasetSpec("imagenet", "/data"), RESOLUTION)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100", "folder"])
def test_missing_path(kind: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as caught:
        load_dataset(parse_dataset_spec(f"{kind}:{tmp_path / 'nowhere'}"), RESOLUTION)
    assert caught.value.field == "--dataset"


def test_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        load_dataset(parse_dataset_spec(f"folder:{tmp_path / 'file'}"), RESOLUTION)


def _drop(path: Path) -> Path:
    path.unlink()
    return path


@pytest.mark.parametrize(
    ("kind", "build", "breakage", "message"),
    [
        ("cifar10", make_cifar10, lambda root: _drop(root / "cifar-10-batches-py" / "test_batch"), "test_batch"),
        ("cifar10", make_cifar10, lambda root: _drop(root / "cifar-10-batches-py" / "batches.meta"), "batches.meta"),
        ("cifar10", make_cifar100, lambda root: root, "cifar-10-batches-py"),
        ("cifar100", make_cifar100, lambda root: _drop(root / "cifar-100-python" / "train"), "missing train"),
        ("cifar100", make_cifar10, lambda root: root, "cifar-100-python"),
        ("folder", make_folder, lambda root: (root / "val").rename(root / "test"), "no val/ folder"),
        ("folder", make_folder, lambda root: (root / "val" / "emu").rename(root / "val" / "yak"), "same class"),
        ("folder", make_folder, lambda root: [_drop(f) for f in (root / "train" / "dog").iterdir()], "no image"),
        ("folder", make_cifar10, lambda root: root, "no train/ folder"),
    ],
)
def test_wrong_layout(
    kind: str, build: Callable[[Path], Path], breakage: Callable[[Path], object], message: str, tmp_path: Path
) -> None:
    root = build(tmp_path / "data")
    breakage(root)
    with pytest.raises(InputError, match=message) as caught:
        load_dataset(parse_dataset_spec(f"{kind}:{root}"), RESOLUTION)
    assert caught.value.field == "--dataset"
    assert "\n" not in str(caught.value)


def test_corrupt_cifar_batch_is_input_error(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot read cifar10"):
        load_dataset(parse_dataset_spec(f"cifar10:{root}"), RESOLUTION)


# --- synthetic ---------------------------------------------------------------------------


def test_spec_parsing() -> None:
    assert parse_dataset_spec("synthetic") == DatasetSpec("synthetic", None, 0)
    assert parse_dataset_spec("synthetic:7") == DatasetSpec("synthetic", None, 7)
    assert parse_dataset_spec("folder:/a:b") == DatasetSpec("folder", "/a:b", 0)


def test_synthetic_is_a_function_of_the_seed() -> None:
    images, labels = generate_synthetic(40, seed=3)
    again_images, again_labels = generate_synthetic(40, seed=3)
    other_images, _ = generate_synthetic(40, seed=4)
    assert images.shape == (40, 3, 64, 64) and images.dtype == np.uint8
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    assert not np.array_equal(images, other_images)


def test_synthetic_load_caches_and_resizes(tmp_path: Path) -> None:
    spec = parse_dataset_spec("synthetic:5")
    data = load_dataset(spec, RESOLUTION, cache_dir=tmp_path, train_size=30, val_size=10)
    cached = sorted(path.name for path in tmp_path.iterdir())
    assert len(cached) == 2 and all(name.endswith(".pt") for name in cached)
    again = load_dataset(spec, RESOLUTION, cache_dir=tmp_path, train_size=30, val_size=10)
    assert torch.equal(data.train.images, again.train.images) and torch.equal(data.val.labels, again.val.labels)
    assert data.train.images.shape == (30, 3, RESOLUTION, RESOLUTION)
    assert data.num_classes == SYNTHETIC_CLASSES and data.name == "synthetic:5"
    assert data.test is None and not data.train.augment
    # Train and val come from separate streams: no image is in both.
    assert not any(torch.equal(image, data.train.images[0]) for image in data.val.images)


def test_synthetic_sizes_are_checked() -> None:
    with pytest.raises(InputError, match="train_size"):
        load_dataset(DatasetSpec("synthetic"), RESOLUTION, train_size=0)


def test_pixel_linear_classifier_is_near_chance() -> None:
    """Ridge regression on raw pixels (the closed-form linear baseline) learns nothing that transfers."""
    data = load_dataset(DatasetSpec("synthetic", seed=11), 64, train_size=1500, val_size=500)

    def features(split: TensorImages) -> torch.Tensor:
        pixels = F.avg_pool2d(split.images.float() / 255, 4).flatten(1)  # 16x16x3: enough for layout and colour
        return torch.cat((pixels, torch.ones(len(pixels), 1)), 1)

    x, y = features(data.train), F.one_hot(data.train.labels, SYNTHETIC_CLASSES).float()
    weights = torch.linalg.solve(x.T @ x + 10.0 * torch.eye(x.shape[1]), x.T @ y)
    accuracy = (features(data.val) @ weights).argmax(1).eq(data.val.labels).float().mean().item()
    # Chance is 0.10; the small MobileViTs reach ~0.4 after the default proxy budget.
    assert accuracy < 0.17
    assert set(data.train.labels.tolist()) == set(range(SYNTHETIC_CLASSES))
