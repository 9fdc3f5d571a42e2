"""The seeded synthetic proxy task: a pure function of a seed, generated once per recipe and cached on disk.

The recipe (what an image shows and how its class is defined) is in
:func:`generate_synthetic`'s docstring; its constants set the difficulty. A cache
file's name carries a digest of the recipe, so a changed recipe never reuses an
old file.

Example:

>>> images, labels = generate_synthetic(4, seed=0)
>>> images.shape, images.dtype, labels.shape
((4, 3, 64, 64), dtype('uint8'), (4,))
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvit_nas.atomic import atomic_path

SYNTHETIC_NATIVE = 64
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_SIZE = 12_800
SYNTHETIC_VAL_SIZE = 1_000

# Texture ids. 0..4 fill the two parts that define the class; RINGS only ever
# appears on the distractor part.
H_STRIPES, V_STRIPES, DIAGONAL, CHECKER, DOTS, RINGS = range(6)

# Recipe constants, in pixels of the native 64 px image. The graded ones (PART_HALF,
# PERIOD, CONTRAST, NOISE_STD) are (easiest, hardest); other pairs are (low, high)
# ranges. They set the difficulty; generate_synthetic's docstring says what each does.
# Tuned so that after the default proxy budget the small MobileViTs reach 35-55%
# and keep improving over an 8x longer training (see the proxy module).
PART_HALF = (12.0, 4.5)
PART_SPACING = (2.0, 10.0)
CROSS_JITTER = 0.3
PERIOD = (10.0, 3.0)
ANGLE_JITTER = np.deg2rad(12.0)
CONTRAST = (1.0, 0.2)
BLOBS = 3
BLOB_RADIUS = (2.0, 7.0)
DISTRACTOR_PROB = 0.6
NOISE_STD = (0.02, 0.14)
DIFFICULTY_JITTER = 0.15
DIFFICULTY_POWER = 2.0
CHUNK = 500


def _cached(cache_dir: Path | None, split: str, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The native-size images of one split, generated once and kept under ``cache_dir``."""
    # Separate streams per split: the train images do not depend on the val size.
    stream = [seed, 0 if split == "train" else 1]
    name = f"synthetic-{_recipe_digest()}-seed{seed}-{split}{count}-{SYNTHETIC_NATIVE}px.pt"
    path = cache_dir / name if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            return stored["images"], stored["labels"]
        except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
            pass  # an unreadable cache is regenerated (and rewritten) below
    images, labels = generate_synthetic(count, stream)
    stored = {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}
    if path is not None:
        # Concurrent workers may read the file while another writes it: they must never see half of it.
        with atomic_path(path) as tmp:
            torch.save(stored, tmp)
    return stored["images"], stored["labels"]


def _recipe_digest() -> str:
    """A short digest of the recipe constants: a cache made by another recipe is never reused."""
    recipe = (PART_HALF, PART_SPACING, CROSS_JITTER, PERIOD, ANGLE_JITTER, CONTRAST, BLOBS, BLOB_RADIUS)
    recipe += (DISTRACTOR_PROB, NOISE_STD, DIFFICULTY_JITTER, DIFFICULTY_POWER, CHUNK, SYNTHETIC_CLASSES)
    return hashlib.sha256(repr(recipe).encode()).hexdigest()[:10]


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """The images at ``resolution`` x ``resolution`` (antialiased bilinear, in chunks to bound memory)."""
    if images.shape[-1] == resolution:
        return images
    chunks = [
        F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear", antialias=True)
        for chunk in images.split(CHUNK)
    ]
    return torch.cat(chunks).round_().clamp_(0, 255).to(torch.uint8)


def generate_synthetic(
    count: int, seed: int | Sequence[int], size: int = SYNTHETIC_NATIVE
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images ``(N, 3, size, size)`` uint8 and labels ``(N,)``, a pure function of ``seed``.

    Recipe (10 classes, balanced in expectation; chance is 10%). Each image draws a
    difficulty ``d = u ** DIFFICULTY_POWER`` (u uniform, so most images are easy and
    a tail is hard); every graded quantity below moves from its easy to its hard
    end with ``d`` (plus a jitter of ``DIFFICULTY_JITTER``):

    1. Background: a smooth random colour field (a 4x4 grid of random colours,
       bilinearly upsampled), then ``BLOBS`` solid ellipses of random colour, size
       (``BLOB_RADIUS``) and place as clutter.
    2. With probability ``DISTRACTOR_PROB``, a distractor part anywhere, textured
       with concentric rings (a texture that never defines a class).
    3. Two class parts, each a square or a disc of half-size ``PART_HALF`` (graded),
       both filled with the class texture: horizontal stripes, vertical stripes,
       diagonal stripes (45 or 135 degrees), a checkerboard or a dot lattice. Each
       part has its own random phase, period (``PERIOD``, graded), orientation
       jitter (``ANGLE_JITTER``), pair of colours and contrast (``CONTRAST``, graded).
    4. Layout: the parts sit side by side (axis 0) or one above the other (axis 1),
       ``PART_SPACING`` apart edge to edge, offset across the axis by up to
       ``CROSS_JITTER`` of their distance, anywhere the pair fits in the image.
    5. Gaussian pixel noise (``NOISE_STD``, graded), clipped to [0, 1].

    The class is ``2 * texture + axis``: a model has to recognise the local texture
    (texture alone gives at most 50%) and relate the two textured parts across the
    image (layout alone gives at most 20%), ignoring colour, position, scale,
    clutter and the ringed distractor. Random phases and colours leave a linear
    classifier on raw pixels at chance.

    Example:

    >>> images, labels = generate_synthetic(8, seed=0)
    >>> np.array_equal(images, generate_synthetic(8, seed=0)[0])
    True
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), np.uint8)
    labels = rng.integers(0, SYNTHETIC_CLASSES, count)
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        images[start:stop] = _render(labels[start:stop], size, rng)
    return images, labels


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], n).astype(np.float32)[:, None, None]


class _Canvas:
    """A batch of float images, padded so that a shape may overhang the border.

    Shapes are painted through small windows around their centres rather than over
    the whole image: generating the default dataset takes seconds, not minutes.
    """

    def __init__(self, background: np.ndarray, pad: int) -> None:
        self.pad = pad
        self.size = background.shape[-1]
        self.pixels = np.pad(background, ((0, 0), (0, 0), (pad, pad), (pad, pad)))

    def window(self, cx: np.ndarray, cy: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
        """Index of the (2*pad, 2*pad) window around each centre, and pixel-centre offsets from it."""
        n, width = len(cx), 2 * self.pad
        x0 = np.floor(cx).astype(np.int64)
        y0 = np.floor(cy).astype(np.int64)
        steps = np.arange(width)
        cols = (x0[:, None] + steps)[:, None, :]
        rows = (y0[:, None] + steps)[:, :, None]
        u = (cols - self.pad + 0.5 - cx[:, None, None]).astype(np.float32)
        v = (rows - self.pad + 0.5 - cy[:, None, None]).astype(np.float32)
        return (np.arange(n)[:, None, None], slice(None), rows, cols), u, v

    def paint(self, index: tuple[np.ndarray, ...], inside: np.ndarray, colour: np.ndarray) -> None:
        """Set the ``inside`` pixels of each window to ``colour`` ((n, H, W, 3) or (n, 1, 1, 3))."""
        batch, _, rows, cols = index
        # Advanced indices around a slice put the window dims first: (n, H, W, 3).
        current = self.pixels[batch, :, rows, cols]
        self.pixels[batch, :, rows, cols] = np.where(inside[..., None], colour, current)

    def image(self) -> np.ndarray:
        """The painted images without the padding."""
        pad = self.pad
        return self.pixels[:, :, pad : pad + self.size, pad : pad + self.size]


def _graded(rng: np.random.Generator, bounds: tuple[float, float], difficulty: np.ndarray) -> np.ndarray:
    """Per-image values between ``bounds`` = (easiest, hardest) at each image's (jittered) difficulty."""
    level = np.clip(difficulty + rng.uniform(-DIFFICULTY_JITTER, DIFFICULTY_JITTER, len(difficulty)), 0.0, 1.0)
    return (bounds[0] + (bounds[1] - bounds[0]) * level).astype(np.float32)


def _texture(
    kind: np.ndarray, u: np.ndarray, v: np.ndarray, difficulty: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Binary texture values (n, H, W) of per-image ``kind`` at part-centred coordinates."""
    n = len(kind)
    base = np.select(
        [kind == H_STRIPES, kind == V_STRIPES, kind == DIAGONAL],
        [np.pi / 2, 0.0, np.where(rng.random(n) < 0.5, np.pi / 4, 3 * np.pi / 4)],
        0.0,
    )
    angle = (base + rng.uniform(-ANGLE_JITTER, ANGLE_JITTER, n)).astype(np.float32)[:, None, None]
    freq = 2 * np.float32(np.pi) / _graded(rng, PERIOD, difficulty)[:, None, None]
    phase_a = _uniform(rng, (0.0, 2 * np.pi), n)
    phase_b = _uniform(rng, (0.0, 2 * np.pi), n)
    cos, sin = np.cos(angle), np.sin(angle)
    wave_a = np.cos(freq * (u * cos + v * sin) + phase_a)
    wave_b = np.cos(freq * (v * cos - u * sin) + phase_b)
    kind = kind[:, None, None]
    return np.select(
        [kind <= DIAGONAL, kind == CHECKER, kind == DOTS],
        [wave_a > 0, wave_a * wave_b > 0, wave_a + wave_b > 1.0],
        np.cos(freq * np.hypot(u, v) + phase_a) > 0,
    )


def _paint_part(
    canvas: _Canvas,
    kind: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    half: np.ndarray,
    difficulty: np.ndarray,
    rng: np.random.Generator,
    present: np.ndarray | None = None,
) -> None:
    """Paint one textured square-or-disc part per image (where ``present``)."""
    n = len(kind)
    index, u, v = canvas.window(cx, cy)
    half = half[:, None, None]
    disc = rng.random(n)[:, None, None] < 0.5
    inside = np.where(disc, np.hypot(u, v) < half, np.maximum(np.abs(u), np.abs(v)) < half)
    if present is not None:
        inside &= present[:, None, None]
    value = _texture(kind, u, v, difficulty, rng)
    colour_a = rng.random((n, 3), dtype=np.float32)
    # The second colour is far from the first in every channel, so the texture is visible.
    colour_b = np.mod(colour_a + 0.5 + rng.uniform(-0.15, 0.15, (n, 3)).astype(np.float32), 1.0)
    contrast = _graded(rng, CONTRAST, difficulty)[:, None]
    mid = (colour_a + colour_b) / 2
    colour_a, colour_b = mid + contrast * (colour_a - mid), mid + contrast * (colour_b - mid)
    canvas.paint(index, inside, np.where(value[..., None], colour_a[:, None, None], colour_b[:, None, None]))


def _render(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One chunk of images for ``labels``, following the recipe of :func:`generate_synthetic`."""
    n = len(labels)
    low = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32) * 0.7 + 0.15)
    background = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).numpy()
    canvas = _Canvas(background, pad=int(np.ceil(max(*PART_HALF, *BLOB_RADIUS))) + 1)
    for _ in range(BLOBS):
        index, u, v = canvas.window(*rng.uniform(0, size, (2, n)))
        rx, ry = _uniform(rng, BLOB_RADIUS, n), _uniform(rng, BLOB_RADIUS, n)
        canvas.paint(index, (u / rx) ** 2 + (v / ry) ** 2 < 1, rng.random((n, 1, 1, 3), dtype=np.float32))
    distractor = rng.random(n) < DISTRACTOR_PROB
    difficulty = rng.random(n) ** DIFFICULTY_POWER
    half = _graded(rng, PART_HALF, difficulty)
    cx, cy = rng.uniform(half, size - half, (2, n))
    _paint_part(canvas, np.full(n, RINGS), cx, cy, half, difficulty, rng, present=distractor)
    texture, axis = labels // 2, labels % 2
    half_a, half_b = _graded(rng, PART_HALF, difficulty), _graded(rng, PART_HALF, difficulty)
    gap = half_a + half_b + rng.uniform(*PART_SPACING, n)
    cross = gap * rng.uniform(-CROSS_JITTER, CROSS_JITTER, n)
    dx, dy = np.where(axis == 0, gap, cross), np.where(axis == 0, cross, gap)
    # Place part a anywhere that leaves room for both parts inside the image.
    low_x, high_x = np.maximum(half_a, half_b - dx), size - np.maximum(half_a, half_b + dx)
    low_y, high_y = np.maximum(half_a, half_b - dy), size - np.maximum(half_a, half_b + dy)
    cx = low_x + rng.random(n) * np.maximum(0, high_x - low_x)
    cy = low_y + rng.random(n) * np.maximum(0, high_y - low_y)
    _paint_part(canvas, texture, cx, cy, half_a, difficulty, rng)
    _paint_part(canvas, texture, cx + dx, cy + dy, half_b, difficulty, rng)
    noise = _graded(rng, NOISE_STD, difficulty)[:, None, None, None]
    image = canvas.image() + noise * rng.standard_normal((n, 3, size, size), dtype=np.float32)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
