"""ArchConfig: presets match the published table, exact YAML/JSON round trips, validation names the field."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import RANDOM_SEED, random_config, random_configs

from mvit_nas import ArchConfig, InputError, MobileViTStageConfig, MV2StageConfig, load_config, preset
from mvit_nas.config import PRESETS, read_mapping

# ---------------------------------------------------------------------------------------------------------------
# Presets reproduce the table of MOBILEVIT.md
# ---------------------------------------------------------------------------------------------------------------

# variant: (layer1..layer5 out_channels, transformer dims, mv2_exp, final 1x1, transformer dropout)
PUBLISHED: dict[str, dict[str, Any]] = {
    "xxs": {"out": (16, 24, 48, 64, 80), "dims": (64, 80, 96), "exp": 2, "final": 320, "tdrop": 0.05},
    "xs": {"out": (32, 48, 64, 80, 96), "dims": (96, 120, 144), "exp": 4, "final": 384, "tdrop": 0.1},
    "s": {"out": (32, 64, 96, 128, 160), "dims": (144, 192, 240), "exp": 4, "final": 640, "tdrop": 0.1},
}


@pytest.mark.parametrize("variant", PRESETS)
def test_preset_matches_published_table(variant: str) -> None:
    cfg = preset(variant)
    table = PUBLISHED[variant]
    assert cfg.stem_channels == 16
    assert (cfg.layer1.num_blocks, cfg.layer2.num_blocks) == (1, 3)
    stages = (cfg.layer1, cfg.layer2, cfg.layer3, cfg.layer4, cfg.layer5)
    assert tuple(stage.out_channels for stage in stages) == table["out"]
    assert all(stage.mv2_exp == table["exp"] for stage in stages)
    assert tuple(stage.transformer_channels for stage in cfg.vit_stages) == table["dims"]
    assert tuple(stage.ffn_dim for stage in cfg.vit_stages) == tuple(2 * dim for dim in table["dims"])
    assert tuple(stage.transformer_blocks for stage in cfg.vit_stages) == (2, 4, 3)
    assert all(stage.num_heads == 4 for stage in cfg.vit_stages)
    assert all((stage.patch_h, stage.patch_w) == (2, 2) for stage in cfg.vit_stages)
    assert cfg.final_channels == table["final"]
    assert (cfg.resolution, cfg.num_classes) == (256, 1000)
    assert cfg.classifier_dropout == 0.1
    assert cfg.transformer_dropout == table["tdrop"]


def test_presets_are_distinct() -> None:
    assert len({preset(name) for name in PRESETS}) == 3


def test_unknown_preset_names_variant() -> None:
    with pytest.raises(InputError) as info:
        preset("xxl")
    assert info.value.field == "variant"
    assert "xxs" in str(info.value)


def test_final_channels_capped_at_960() -> None:
    cfg = dataclasses.replace(preset("s"), last_layer_exp_factor=8)
    assert cfg.final_channels == 960
    assert dataclasses.replace(preset("s"), last_layer_exp_factor=6).final_channels == 960
    assert dataclasses.replace(preset("s"), last_layer_exp_factor=5).final_channels == 800


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------

ROUND_TRIP_CONFIGS = [preset(name) for name in PRESETS] + random_configs(20, seed=RANDOM_SEED + 1)
ROUND_TRIP_IDS = [*PRESETS, *(f"random{i}" for i in range(20))]


def _typed(value: Any) -> Any:
    """A nested structure with each leaf's type next to it, so 1 vs 1.0 vs True differ."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    return (type(value).__name__, value)


@pytest.mark.parametrize("cfg", ROUND_TRIP_CONFIGS, ids=ROUND_TRIP_IDS)
def test_dict_round_trip_is_exact(cfg: ArchConfig) -> None:
    data = cfg.to_dict()
    again = ArchConfig.from_dict(copy.deepcopy(data))
    assert again == cfg
    assert _typed(again.to_dict()) == _typed(data)


@pytest.mark.parametrize("cfg", ROUND_TRIP_CONFIGS, ids=ROUND_TRIP_IDS)
def test_text_round_trip_is_exact(cfg: ArchConfig) -> None:
    from_yaml = ArchConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    from_json = ArchConfig.from_dict(json.loads(cfg.to_json()))
    assert from_yaml == cfg and from_json == cfg
    assert _typed(from_yaml.to_dict()) == _typed(cfg.to_dict()) == _typed(from_json.to_dict())


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize("cfg", ROUND_TRIP_CONFIGS, ids=ROUND_TRIP_IDS)
def test_file_round_trip_is_exact(cfg: ArchConfig, suffix: str, tmp_path: Path) -> None:
    path = cfg.save(tmp_path / f"arch{suffix}")
    assert path.exists()
    loaded = load_config(path)
    assert loaded == cfg
    assert _typed(loaded.to_dict()) == _typed(cfg.to_dict())
    # A second save writes byte-identical text: the file is a fixed point.
    assert loaded.save(tmp_path / f"again{suffix}").read_bytes() == path.read_bytes()


def test_json_file_is_json_and_yaml_file_is_yaml(tmp_path: Path) -> None:
    cfg = preset("xs")
    assert json.loads(cfg.save(tmp_path / "a.json").read_text()) == cfg.to_dict()
    yaml_text = cfg.save(tmp_path / "a.yaml").read_text()
    assert not yaml_text.lstrip().startswith("{")
    assert yaml.safe_load(yaml_text) == cfg.to_dict()


SMALL_DROPOUTS = [
    *((suffix, dropout) for suffix in (".yaml", ".yml") for dropout in (1e-05, 5e-05, 2e-06, 1.5e-07)),
    # JSON files are parsed as JSON: YAML 1.1 would read an exponent without a dot ('1e-05') as a string.
    *((".json", dropout) for dropout in (1e-05, 5e-05, 2e-06, 1.5e-07)),
]


@pytest.mark.parametrize(("suffix", "dropout"), SMALL_DROPOUTS)
def test_small_dropout_file_round_trip(dropout: float, suffix: str, tmp_path: Path) -> None:
    """Floats that Python writes in exponent form (< 1e-4) must survive a file round trip too."""
    cfg = dataclasses.replace(preset("xxs"), transformer_dropout=dropout, classifier_dropout=dropout)
    assert load_config(cfg.save(tmp_path / f"arch{suffix}")) == cfg


def test_optional_keys_take_defaults() -> None:
    data = preset("xxs").to_dict()
    for key in ("last_layer_exp_factor", "resolution", "num_classes", "classifier_dropout", "transformer_dropout"):
        del data[key]
    cfg = ArchConfig.from_dict(data)
    assert (cfg.last_layer_exp_factor, cfg.resolution, cfg.num_classes) == (4, 256, 1000)
    assert (cfg.classifier_dropout, cfg.transformer_dropout) == (0.1, 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Hashable, immutable, equal by value
# ---------------------------------------------------------------------------------------------------------------


def test_equal_by_value_and_hashable() -> None:
    a, b = preset("xs"), ArchConfig.from_dict(preset("xs").to_dict())
    assert a == b and a is not b
    assert hash(a) == hash(b)
    assert len({a, b, preset("xxs")}) == 2
    assert {a: 1}[b] == 1
    changed = dataclasses.replace(a, layer4=dataclasses.replace(a.layer4, num_heads=2))
    assert changed != a
    assert changed.layer4 != a.layer4 and changed.layer3 == a.layer3


def test_random_configs_hash_consistently() -> None:
    rng = random.Random(RANDOM_SEED)
    configs = [random_config(rng) for _ in range(30)]
    copies = [ArchConfig.from_dict(cfg.to_dict()) for cfg in configs]
    assert [hash(c) for c in configs] == [hash(c) for c in copies]
    assert set(configs) == set(copies)


def test_frozen() -> None:
    cfg = preset("xxs")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.resolution = 128  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.layer3.num_heads = 2  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------
# Validation: every rule raises InputError naming the field
# ---------------------------------------------------------------------------------------------------------------


def _base() -> dict[str, Any]:
    return preset("xxs").to_dict()


def _with(path: str, value: Any) -> dict[str, Any]:
    """The xxs dict with ``path`` ("resolution" or "layer3.num_heads") set to ``value``."""
    data = _base()
    *parents, leaf = path.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    return data


BAD_VALUES: list[tuple[str, Any]] = [
    # zero / negative sizes
    ("stem_channels", 0),
    ("stem_channels", -16),
    ("layer1.out_channels", 0),
    ("layer1.mv2_exp", 0),
    ("layer1.num_blocks", 0),
    ("layer2.num_blocks", -1),
    ("layer3.out_channels", -48),
    ("layer3.mv2_exp", -2),
    ("layer3.transformer_channels", 0),
    ("layer4.ffn_dim", 0),
    ("layer5.transformer_blocks", 0),
    ("layer3.num_heads", 0),
    ("last_layer_exp_factor", 0),
    ("num_classes", 0),
    ("num_classes", -10),
    # bool, float, string, None where an int is expected
    ("stem_channels", True),
    ("layer2.num_blocks", False),
    ("layer4.num_heads", True),
    ("layer3.patch_h", True),
    ("resolution", True),
    ("stem_channels", 16.0),
    ("layer3.ffn_dim", 128.5),
    ("layer1.out_channels", "16"),
    ("num_classes", None),
    # zero / negative patch
    ("layer3.patch_h", 0),
    ("layer4.patch_w", 0),
    ("layer5.patch_w", -2),
    # resolution
    ("resolution", 31),
    ("resolution", 0),
    ("resolution", -256),
    # dropout
    ("classifier_dropout", 1.0),
    ("classifier_dropout", -0.1),
    ("transformer_dropout", 1.5),
    ("transformer_dropout", math.nan),
    ("transformer_dropout", math.inf),
    ("classifier_dropout", True),
    ("classifier_dropout", "0.1"),
    # huge numbers
    ("stem_channels", 10**12),
    ("layer2.out_channels", 2**63),
    ("layer3.transformer_blocks", 10**6),
    ("layer3.ffn_dim", 10**9),
    ("layer4.num_heads", 10**9),
    ("layer5.patch_h", 10**9),
    ("layer1.mv2_exp", 10**6),
    ("resolution", 10**9),
    ("num_classes", 10**12),
    ("last_layer_exp_factor", 10**6),
]


@pytest.mark.parametrize(("path", "value"), BAD_VALUES, ids=[f"{p}={v!r}" for p, v in BAD_VALUES])
def test_bad_value_names_field(path: str, value: Any) -> None:
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(_with(path, value))
    assert info.value.field == path
    assert path in str(info.value)


def _vit(**changes: Any) -> dict[str, Any]:
    data = _base()
    data["layer3"].update(changes)
    return data


def _vit_at(resolution: int, stage: str, **changes: Any) -> dict[str, Any]:
    data = _with("resolution", resolution)
    data[stage].update(changes)
    return data


RULES: list[tuple[str, dict[str, Any], str]] = [
    ("heads not dividing dim", _vit(transformer_channels=64, num_heads=3), "layer3.num_heads"),
    ("heads not dividing dim (odd dim)", _vit(transformer_channels=66, num_heads=4, ffn_dim=132), "layer3.num_heads"),
    ("head dim 2", _vit(transformer_channels=8, num_heads=4, ffn_dim=16), "layer3.num_heads"),
    ("head dim 3", _vit(transformer_channels=12, num_heads=4, ffn_dim=12), "layer3.num_heads"),
    ("dim below 4", _vit(transformer_channels=3, num_heads=1, ffn_dim=8), "layer3.transformer_channels"),
    ("ffn below dim", _vit(ffn_dim=63), "layer3.ffn_dim"),
    ("patch_h above map at 256", _with("layer5.patch_h", 9), "layer5.patch_h"),
    ("patch_w above map at 256", _with("layer4.patch_w", 17), "layer4.patch_w"),
    ("patch above map at 32 px", _with("resolution", 32), "layer5.patch_h"),
    ("patch above map at 33 px", _vit_at(33, "layer5", patch_w=3), "layer5.patch_w"),  # layer5 map is 2x2
    ("patch above map at 100 px", _vit_at(100, "layer4", patch_h=8), "layer4.patch_h"),  # layer4 map is 7x7
]


@pytest.mark.parametrize(("data", "field"), [(d, f) for _, d, f in RULES], ids=[name for name, _, _ in RULES])
def test_rule_names_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == field


def test_boundaries_are_accepted() -> None:
    """The limits themselves are valid: head dim exactly 4, ffn == dim, patch == map, resolution 32."""
    cfg = ArchConfig.from_dict(_vit(transformer_channels=16, num_heads=4, ffn_dim=16))
    assert cfg.layer3.head_dim == 4 and cfg.layer3.ffn_dim == cfg.layer3.transformer_channels
    data = _with("resolution", 32)
    data["layer5"].update(patch_h=1, patch_w=1)
    data["layer4"].update(patch_h=2, patch_w=2)  # layer4 map is 2x2 at 32 px
    assert ArchConfig.from_dict(data).resolution == 32
    assert ArchConfig.from_dict(_with("layer5.patch_h", 8)).layer5.patch_h == 8  # layer5 map is 8 at 256
    assert ArchConfig.from_dict(_with("classifier_dropout", 0)).classifier_dropout == 0


def test_direct_construction_validates() -> None:
    good = preset("xxs")
    with pytest.raises(InputError) as info:
        dataclasses.replace(good, layer4=dataclasses.replace(good.layer4, num_heads=3))
    assert info.value.field == "layer4.num_heads"
    with pytest.raises(InputError) as info:
        dataclasses.replace(good, stem_channels=0)
    assert info.value.field == "stem_channels"


def test_stage_of_wrong_type_names_stage() -> None:
    good = preset("xxs")
    with pytest.raises(InputError) as info:
        dataclasses.replace(good, layer3=good.layer1)  # type: ignore[arg-type]
    assert info.value.field == "layer3"
    with pytest.raises(InputError) as info:
        dataclasses.replace(good, layer1=good.to_dict()["layer1"])  # a dict, not a record
    assert info.value.field == "layer1"


def test_unknown_top_level_key() -> None:
    data = _base()
    data["dropout"] = 0.1
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == "dropout"
    assert "resolution" in info.value.problem  # lists what is allowed


@pytest.mark.parametrize("stage", ["layer1", "layer2", "layer3", "layer5"])
def test_unknown_stage_key(stage: str) -> None:
    data = _base()
    data[stage]["patch_size"] = 2
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == f"{stage}.patch_size"
    assert "out_channels" in info.value.problem


@pytest.mark.parametrize("key", ["stem_channels", "layer1", "layer2", "layer3", "layer4", "layer5"])
def test_missing_required_top_level_key(key: str) -> None:
    data = _base()
    del data[key]
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == key


@pytest.mark.parametrize(
    "path",
    ["layer1.out_channels", "layer2.num_blocks", "layer3.ffn_dim", "layer4.patch_w", "layer5.transformer_channels"],
)
def test_missing_stage_key(path: str) -> None:
    stage, key = path.split(".")
    data = _base()
    del data[stage][key]
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == path


@pytest.mark.parametrize("value", [[16, 2, 1], 16, "layer", None])
@pytest.mark.parametrize("stage", ["layer1", "layer4"])
def test_non_mapping_stage(stage: str, value: Any) -> None:
    data = _base()
    data[stage] = value
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == stage


@pytest.mark.parametrize("value", [[1, 2], "xxs", None, 3])
def test_non_mapping_config(value: Any) -> None:
    with pytest.raises(InputError) as info:
        ArchConfig.from_dict(value)
    assert info.value.field == "config"


def test_stage_record_types() -> None:
    cfg = ArchConfig.from_dict(_base())
    assert isinstance(cfg.layer1, MV2StageConfig) and isinstance(cfg.layer2, MV2StageConfig)
    assert all(isinstance(stage, MobileViTStageConfig) for stage in cfg.vit_stages)


# ---------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------


def _expect_config_error(path: Path, needle: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_config(path)
    assert info.value.field.lstrip("-") == "config"  # "config" or the CLI flag "--config"
    assert needle in info.value.problem
    assert "\n" not in str(info.value)  # one line for the CLI
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    error = _expect_config_error(tmp_path / "nope.yaml", "does not exist")
    assert "nope.yaml" in error.problem


def test_directory(tmp_path: Path) -> None:
    _expect_config_error(tmp_path, "directory")


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("stem_channels: 16 # caf\xe9\n".encode("latin-1") + b"\xff\xfe\x00")
    _expect_config_error(path, "UTF-8")


INVALID_YAML = [
    "stem_channels: [16\n",
    "a: b: c\n",
    "layer1:\n  out_channels: 16\n   mv2_exp: 2\n",
    "{unclosed: 1\n",
    "\t- x",
]


@pytest.mark.parametrize("text", INVALID_YAML)
def test_invalid_yaml(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    _expect_config_error(path, "not valid YAML")


@pytest.mark.parametrize(
    ("text", "type_name"), [("- 1\n- 2\n", "list"), ("16\n", "int"), ("just a string\n", "str"), ("null\n", "NoneType")]
)
def test_yaml_not_a_mapping(text: str, type_name: str, tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    _expect_config_error(path, type_name)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    _expect_config_error(path, "mapping")


def test_read_mapping_names_what(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        read_mapping(tmp_path / "missing.yaml", "space")
    assert info.value.field == "space"
    path = tmp_path / "ok.yaml"
    path.write_text("a: 1\nb: [1, 2]\n")
    assert read_mapping(path, "space") == {"a": 1, "b": [1, 2]}


def test_file_with_invalid_content_names_inner_field(tmp_path: Path) -> None:
    data = _base()
    data["layer4"]["num_heads"] = 3
    path = tmp_path / "bad_heads.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as info:
        load_config(path)
    assert info.value.field == "layer4.num_heads"
