"""Architecture records: one frozen, hashable :class:`ArchConfig` per MobileViT.

The field names follow the published MobileViT configuration tables (Apple's
ml-cvnets): ``out_channels``, ``mv2_exp``, ``num_blocks`` for the MobileNetV2
stages (layer1, layer2) and, for the MobileViT stages (layer3..layer5),
``transformer_channels``, ``ffn_dim``, ``transformer_blocks``, ``num_heads``,
``patch_h``, ``patch_w``. Strides are structural (layer1 keeps the resolution,
every other stage halves it) and so are not fields: :data:`STRIDES` and
:func:`layout` are the one description of the stage layout, which the model, the
cost counter and the latency predictor all walk.

Example:

>>> cfg = preset("xxs")
>>> ArchConfig.from_dict(cfg.to_dict()) == cfg
True
>>> layout(cfg).head.height  # the 256 px input is 8 px after five stride-2 steps
8
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mvit_nas.validate import InputError, check_int, check_keys, check_number

PRESETS = ("xxs", "xs", "s")
MAX_FINAL_CHANNELS = 960  # ml-cvnets caps the final 1x1 expansion at 960
MIN_RESOLUTION = 32

# Upper bounds keep a typo (or a fuzzer) from asking for a model that cannot be
# allocated; they are far above anything a mobile search needs.
MAX_CHANNELS = 2048
MAX_BLOCKS = 16
MAX_HEADS = 64
MAX_PATCH = 16
MAX_EXPANSION = 8
MAX_RESOLUTION = 1024
MAX_CLASSES = 100_000

# The stage layout of a MobileViT: the stem and each stage's first block stride by these.
# Written here only; the model, the cost counter and the latency predictor walk it via layout().
STRIDES = {"stem": 2, "layer1": 1, "layer2": 2, "layer3": 2, "layer4": 2, "layer5": 2}
MV2_STAGES = ("layer1", "layer2")
VIT_STAGES = ("layer3", "layer4", "layer5")


def conv_out(size: int, stride: int) -> int:
    """Output size of a 3x3 convolution with padding 1 (every strided conv here)."""
    return (size - 1) // stride + 1


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor``, never more than 10% below ``value`` (MobileNetV2 rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def stage_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature-map (h, w) after the stem and after each of layer1..layer5."""
    sizes = []
    for stride in STRIDES.values():
        height, width = conv_out(height, stride), conv_out(width, stride)
        sizes.append((height, width))
    return sizes


@dataclass(frozen=True)
class MV2StageConfig:
    """A stage of MobileNetV2 inverted-residual blocks (layer1, layer2)."""

    out_channels: int
    mv2_exp: int
    num_blocks: int

    def validate(self, name: str) -> None:
        check_int(f"{name}.out_channels", self.out_channels, 1, MAX_CHANNELS)
        check_int(f"{name}.mv2_exp", self.mv2_exp, 1, MAX_EXPANSION)
        check_int(f"{name}.num_blocks", self.num_blocks, 1, MAX_BLOCKS)


@dataclass(frozen=True)
class MobileViTStageConfig:
    """A strided MV2 block followed by one MobileViT block (layer3..layer5)."""

    out_channels: int
    mv2_exp: int
    transformer_channels: int
    ffn_dim: int
    transformer_blocks: int
    num_heads: int
    patch_h: int
    patch_w: int

    @property
    def head_dim(self) -> int:
        return self.transformer_channels // self.num_heads

    def validate(self, name: str) -> None:
        check_int(f"{name}.out_channels", self.out_channels, 1, MAX_CHANNELS)
        check_int(f"{name}.mv2_exp", self.mv2_exp, 1, MAX_EXPANSION)
        check_int(f"{name}.transformer_channels", self.transformer_channels, 4, MAX_CHANNELS)
        check_int(f"{name}.ffn_dim", self.ffn_dim, 1, 4 * MAX_CHANNELS)
        check_int(f"{name}.transformer_blocks", self.transformer_blocks, 1, MAX_BLOCKS)
        check_int(f"{name}.num_heads", self.num_heads, 1, MAX_HEADS)
        check_int(f"{name}.patch_h", self.patch_h, 1, MAX_PATCH)
        check_int(f"{name}.patch_w", self.patch_w, 1, MAX_PATCH)
        if self.transformer_channels % self.num_heads:
            raise InputError(
                f"{name}.num_heads",
                f"must divide transformer_channels={self.transformer_channels}, got {self.num_heads}",
            )
        if self.head_dim < 4:
            raise InputError(
                f"{name}.num_heads",
                f"leaves a head dim of {self.head_dim}; transformer_channels / num_heads must be >= 4",
            )
        if self.ffn_dim < self.transformer_channels:
            raise InputError(
                f"{name}.ffn_dim",
                f"must be >= transformer_channels={self.transformer_channels}, got {self.ffn_dim}",
            )


_STAGE_TYPES: dict[str, type] = {
    **dict.fromkeys(MV2_STAGES, MV2StageConfig),
    **dict.fromkeys(VIT_STAGES, MobileViTStageConfig),
}


@dataclass(frozen=True)
class ArchConfig:
    """One MobileViT architecture. Immutable and hashable; validated on creation.

    ``final_channels`` (the last 1x1 expansion) is derived:
    ``min(last_layer_exp_factor * layer5.out_channels, 960)``.
    """

    stem_channels: int
    layer1: MV2StageConfig
    layer2: MV2StageConfig
    layer3: MobileViTStageConfig
    layer4: MobileViTStageConfig
    layer5: MobileViTStageConfig
    last_layer_exp_factor: int = 4
    resolution: int = 256
    num_classes: int = 1000
    classifier_dropout: float = 0.1
    transformer_dropout: float = 0.1

    def __post_init__(self) -> None:
        self.validate()

    @property
    def final_channels(self) -> int:
        return min(self.last_layer_exp_factor * self.layer5.out_channels, MAX_FINAL_CHANNELS)

    @property
    def vit_stages(self) -> tuple[MobileViTStageConfig, ...]:
        return tuple(getattr(self, name) for name in VIT_STAGES)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid field."""
        check_int("stem_channels", self.stem_channels, 1, MAX_CHANNELS)
        for name, stage_type in _STAGE_TYPES.items():
            stage = getattr(self, name)
            if not isinstance(stage, stage_type):
                raise InputError(name, f"must be a {stage_type.__name__}")
            stage.validate(name)
        check_int("last_layer_exp_factor", self.last_layer_exp_factor, 1, MAX_EXPANSION)
        check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        check_number("classifier_dropout", self.classifier_dropout, 0.0, 1.0, open_high=True)
        check_number("transformer_dropout", self.transformer_dropout, 0.0, 1.0, open_high=True)
        sizes = stage_sizes(self.resolution, self.resolution)
        for name, (height, width) in zip(VIT_STAGES, sizes[3:], strict=True):
            stage = getattr(self, name)
            for field, patch, size in (("patch_h", stage.patch_h, height), ("patch_w", stage.patch_w, width)):
                if patch > size:
                    raise InputError(
                        f"{name}.{field}",
                        f"{patch} is larger than the {size}px feature map at resolution {self.resolution}",
                    )

    # --- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ArchConfig:
        """Build from a plain mapping; unknown and missing keys name the field."""
        top_fields = {f.name: f for f in dataclasses.fields(cls)}
        check_keys("config", data, top_fields)
        kwargs: dict[str, Any] = {}
        for name, field in top_fields.items():
            if name not in data:
                if field.default is dataclasses.MISSING:
                    raise InputError(name, "is required")
                continue
            value = data[name]
            if name in _STAGE_TYPES:
                value = _stage_from_dict(name, value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> Path:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)
        return path


# --- the stage layout, walked once -------------------------------------------------------


@dataclass(frozen=True)
class StemBlock:
    """The stride-2 3x3 conv on the image; ``height`` x ``width`` is its input size."""

    kind: ClassVar[str] = "stem"
    out_channels: int
    height: int
    width: int


@dataclass(frozen=True)
class MV2Block:
    """A MobileNetV2 inverted residual: 1x1 expansion, 3x3 depthwise (``stride``), 1x1 projection."""

    kind: ClassVar[str] = "mv2"
    in_channels: int
    out_channels: int
    stride: int
    expansion: int
    height: int
    width: int

    @property
    def hidden_channels(self) -> int:
        return make_divisible(self.in_channels * self.expansion)

    @property
    def out_size(self) -> tuple[int, int]:
        return conv_out(self.height, self.stride), conv_out(self.width, self.stride)


@dataclass(frozen=True)
class ViTBlock:
    """A MobileViT block: local convs, ``layers`` transformer layers over unfolded patches, fusion."""

    kind: ClassVar[str] = "mobilevit"
    channels: int
    dim: int
    ffn_dim: int
    layers: int
    num_heads: int
    patch_h: int
    patch_w: int
    height: int
    width: int


@dataclass(frozen=True)
class HeadBlock:
    """The final 1x1 conv to ``final_channels``, global pooling and the classifier."""

    kind: ClassVar[str] = "head"
    in_channels: int
    final_channels: int
    num_classes: int
    height: int
    width: int


Block = StemBlock | MV2Block | ViTBlock | HeadBlock
BLOCK_TYPES: dict[str, type[Block]] = {block.kind: block for block in (StemBlock, MV2Block, ViTBlock, HeadBlock)}


@dataclass(frozen=True)
class Layout:
    """Every block ``build_model(cfg)`` runs, with its input size: ``stem``, ``stages`` (layer1..5), ``head``."""

    stem: StemBlock
    stages: dict[str, tuple[MV2Block | ViTBlock, ...]]
    head: HeadBlock

    def blocks(self) -> list[Block]:
        """All blocks in execution order."""
        return [self.stem, *(block for stage in self.stages.values() for block in stage), self.head]


def layout(cfg: ArchConfig, height: int | None = None, width: int | None = None) -> Layout:
    """The network ``cfg`` describes on a (3, height, width) input (default ``cfg.resolution``).

    Layers 1-2 are MV2 stages whose first block strides by :data:`STRIDES`; layers 3-5 are a
    strided MV2 block followed by one MobileViT block.

    >>> [block.kind for block in layout(preset("xxs")).blocks()][:7]
    ['stem', 'mv2', 'mv2', 'mv2', 'mv2', 'mv2', 'mobilevit']
    """
    height = cfg.resolution if height is None else height
    width = height if width is None else width
    stem = StemBlock(cfg.stem_channels, height, width)
    size = (conv_out(height, STRIDES["stem"]), conv_out(width, STRIDES["stem"]))
    channels = cfg.stem_channels
    stages: dict[str, tuple[MV2Block | ViTBlock, ...]] = {}
    for name in (*MV2_STAGES, *VIT_STAGES):
        stage = getattr(cfg, name)
        repeats = stage.num_blocks if isinstance(stage, MV2StageConfig) else 1
        blocks: list[MV2Block | ViTBlock] = []
        for index in range(repeats):
            stride = STRIDES[name] if index == 0 else 1
            block = MV2Block(channels, stage.out_channels, stride, stage.mv2_exp, *size)
            blocks.append(block)
            size, channels = block.out_size, stage.out_channels
        if isinstance(stage, MobileViTStageConfig):
            blocks.append(
                ViTBlock(
                    channels,
                    stage.transformer_channels,
                    stage.ffn_dim,
                    stage.transformer_blocks,
                    stage.num_heads,
                    stage.patch_h,
                    stage.patch_w,
                    *size,
                )
            )
        stages[name] = tuple(blocks)
    head = HeadBlock(channels, cfg.final_channels, cfg.num_classes, *size)
    return Layout(stem, stages, head)


def _stage_from_dict(name: str, data: Any) -> MV2StageConfig | MobileViTStageConfig:
    stage_type = _STAGE_TYPES[name]
    if not isinstance(data, dict):
        raise InputError(name, f"must be a mapping of {stage_type.__name__} fields, got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(stage_type)]
    return stage_type(**check_keys(name, data, fields, fields, prefix=f"{name}."))


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML (or JSON) file that must hold a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(what, f"file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(what, f"{str(path)!r} is a directory, not a file") from None
    except PermissionError:
        raise InputError(what, f"file {str(path)!r} is not readable") from None
    except UnicodeDecodeError:
        raise InputError(what, f"file {str(path)!r} is not UTF-8 text") from None
    # JSON is read as JSON: YAML 1.1 would take a number like 1e-05 for a string.
    is_json = path.suffix == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    # PyYAML raises more than YAMLError on some malformed tags (!!bool 'maybe', !!timestamp 'x').
    except (yaml.YAMLError, ValueError, RecursionError, AttributeError, KeyError, TypeError) as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        language = "JSON" if is_json else "YAML"
        raise InputError(what, f"file {str(path)!r} is not valid {language} ({problem})") from None
    if not isinstance(data, dict):
        raise InputError(what, f"file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path) -> ArchConfig:
    """Read an :class:`ArchConfig` from a YAML or JSON file."""
    return ArchConfig.from_dict(read_mapping(path, "--config"))


def spaces_dir() -> Path:
    """Folder of the bundled search spaces (``search_spaces/`` in the repository)."""
    return Path(str(resources.files("mvit_nas.search_spaces")))


def preset(name: str) -> ArchConfig:
    """The published MobileViT ``xxs``, ``xs`` or ``s`` (256 px, 1000 classes).

    Example::

        model = build_model(preset("s"))
    """
    if name not in PRESETS:
        raise InputError("variant", f"must be one of {', '.join(PRESETS)}, got {name!r}")
    return load_config(spaces_dir() / "presets" / f"{name}.yaml")
