"""Architecture records: one frozen, hashable :class:`ArchConfig` per MobileViT.

The field names follow the published MobileViT configuration tables (Apple's
ml-cvnets): ``out_channels``, ``mv2_exp``, ``num_blocks`` for the MobileNetV2
stages (layer1, layer2) and, for the MobileViT stages (layer3..layer5),
``transformer_channels``, ``ffn_dim``, ``transformer_blocks``, ``num_heads``,
``patch_h``, ``patch_w``. Strides are structural (layer1 keeps the resolution,
every other stage halves it) and so are not fields.

Example::

    from mvit_nas import preset
    cfg = preset("xxs")
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mvit_nas.errors import InputError, shown

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
    for stride in (2, 1, 2, 2, 2, 2):
        height, width = conv_out(height, stride), conv_out(width, stride)
        sizes.append((height, width))
    return sizes


def _check_int(field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(field, f"must be an integer in [{low}, {high}], got {shown(value)}")


def _check_rate(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InputError(field, f"must be a number in [0, 1), got {shown(value)}")


@dataclass(frozen=True)
class MV2StageConfig:
    """A stage of MobileNetV2 inverted-residual blocks (layer1, layer2)."""

    out_channels: int
    mv2_exp: int
    num_blocks: int

    def validate(self, name: str) -> None:
        _check_int(f"{name}.out_channels", self.out_channels, 1, MAX_CHANNELS)
        _check_int(f"{name}.mv2_exp", self.mv2_exp, 1, MAX_EXPANSION)
        _check_int(f"{name}.num_blocks", self.num_blocks, 1, MAX_BLOCKS)


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
        _check_int(f"{name}.out_channels", self.out_channels, 1, MAX_CHANNELS)
        _check_int(f"{name}.mv2_exp", self.mv2_exp, 1, MAX_EXPANSION)
        _check_int(f"{name}.transformer_channels", self.transformer_channels, 4, MAX_CHANNELS)
        _check_int(f"{name}.ffn_dim", self.ffn_dim, 1, 4 * MAX_CHANNELS)
        _check_int(f"{name}.transformer_blocks", self.transformer_blocks, 1, MAX_BLOCKS)
        _check_int(f"{name}.num_heads", self.num_heads, 1, MAX_HEADS)
        _check_int(f"{name}.patch_h", self.patch_h, 1, MAX_PATCH)
        _check_int(f"{name}.patch_w", self.patch_w, 1, MAX_PATCH)
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
    "layer1": MV2StageConfig,
    "layer2": MV2StageConfig,
    "layer3": MobileViTStageConfig,
    "layer4": MobileViTStageConfig,
    "layer5": MobileViTStageConfig,
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
    def vit_stages(self) -> tuple[MobileViTStageConfig, MobileViTStageConfig, MobileViTStageConfig]:
        return (self.layer3, self.layer4, self.layer5)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid field."""
        _check_int("stem_channels", self.stem_channels, 1, MAX_CHANNELS)
        for name, stage_type in _STAGE_TYPES.items():
            stage = getattr(self, name)
            if not isinstance(stage, stage_type):
                raise InputError(name, f"must be a {stage_type.__name__}")
            stage.validate(name)
        _check_int("last_layer_exp_factor", self.last_layer_exp_factor, 1, MAX_EXPANSION)
        _check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        _check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        _check_rate("classifier_dropout", self.classifier_dropout)
        _check_rate("transformer_dropout", self.transformer_dropout)
        sizes = stage_sizes(self.resolution, self.resolution)
        for name, (height, width) in zip(("layer3", "layer4", "layer5"), sizes[3:], strict=True):
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
        if not isinstance(data, dict):
            raise InputError("config", f"must be a mapping of fields, got {type(data).__name__}")
        top_fields = {f.name: f for f in dataclasses.fields(cls)}
        _reject_unknown(data, top_fields, prefix="")
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


def _reject_unknown(data: dict, allowed: dict, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            names = ", ".join(allowed)
            raise InputError(f"{prefix}{key}", f"unknown key; allowed keys are {names}")


def _stage_from_dict(name: str, data: Any) -> MV2StageConfig | MobileViTStageConfig:
    stage_type = _STAGE_TYPES[name]
    if not isinstance(data, dict):
        raise InputError(name, f"must be a mapping of {stage_type.__name__} fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(stage_type)}
    _reject_unknown(data, fields, prefix=f"{name}.")
    for field in fields:
        if field not in data:
            raise InputError(f"{name}.{field}", "is required")
    return stage_type(**data)


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
