"""The search space: loading, validation naming the knob, sampling, seeds inside."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from mvit_nas import InputError, build_model, preset
from mvit_nas.config import PRESETS, spaces_dir, stage_sizes
from mvit_nas.space import DEFAULT_SPACE, load_space, parse_space


@pytest.fixture(scope="module")
def default_data() -> dict[str, Any]:
    return yaml.safe_load((spaces_dir() / DEFAULT_SPACE).read_text())


def test_default_space_contains_the_seeds() -> None:
    space = load_space()
    for name in PRESETS:
        cfg = preset(name)
        assert space.contains(cfg)
        decoded = space.decode(space.params_of(cfg))
        # The space fixes training settings (dropouts); the architecture is the preset's.
        assert decoded == dataclasses.replace(cfg, transformer_dropout=decoded.transformer_dropout)


def test_cardinality_is_the_product_of_choice_counts(default_data: dict[str, Any]) -> None:
    space = load_space()
    counts = []
    for key, value in default_data.items():
        if key == "name":
            continue
        if isinstance(value, dict):
            counts += [len(choices) for choices in value.values()]
        else:
            counts.append(len(value) if isinstance(value, list) else 1)
    assert space.cardinality == math.prod(counts)
    assert space.cardinality > 10**12


def test_space_spans_below_xxs_and_above_s() -> None:
    from mvit_nas.cost import count_cost

    space = load_space()
    smallest = space.decode({knob: min(values) for knob, values in space.choices.items()})
    largest = space.decode({knob: max(values) for knob, values in space.choices.items()})
    assert count_cost(smallest).flops < count_cost(preset("xxs")).flops / 5
    assert count_cost(largest).flops > count_cost(preset("s")).flops


def test_every_sampled_config_is_valid_and_builds() -> None:
    space = load_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        cfg = space.sample(trial, num_classes=10)
        seen.add(cfg)
        assert space.contains(cfg)
        sizes = stage_sizes(cfg.resolution, cfg.resolution)
        for stage, (height, _) in zip(cfg.vit_stages, sizes[3:], strict=True):
            assert stage.patch_h <= height
        study.tell(trial, 0.0)
    assert len(seen) == 30
    model = build_model(cfg)  # the last one builds
    assert sum(p.numel() for p in model.parameters()) > 0


def test_enqueued_seed_params_reproduce_the_seed() -> None:
    space = load_space()
    study = optuna.create_study()
    for name in PRESETS:
        study.enqueue_trial(space.params_of(preset(name)))
    for name in PRESETS:
        trial = study.ask()
        cfg = space.sample(trial)
        assert space.params_of(cfg) == space.params_of(preset(name))
        study.tell(trial, 0.0)


def _mutate(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, key = path.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    if value is _DELETE:
        del target[key]
    else:
        target[key] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("layer3.num_heads", [], "layer3.num_heads"),  # empty choice list
        ("layer3.bogus", [1], "layer3.bogus"),  # unknown key in a stage
        ("bogus", [1], "bogus"),  # unknown top-level key
        ("layer4.num_heads", [2, 7], "layer4.num_heads"),  # 7 divides no dim
        ("layer3.ffn_ratio", [0, 2], "layer3.ffn_ratio"),  # ffn_dim < dim
        ("layer3.ffn_ratio", [1.5], "layer3.ffn_ratio"),
        ("layer2.out_channels", [16, -8], "layer2.out_channels"),
        ("layer5.patch_h", [0, 2], "layer5.patch_h"),
        ("layer5.patch_h", [2, 8], "layer5.patch_h"),  # larger than the 4 px map at 128 px
        ("resolution", [16, 128], "resolution"),
        ("stem_channels", ["wide"], "stem_channels"),
        ("layer1.mv2_exp", [2, 2], "layer1.mv2_exp"),  # repeated choice
        ("layer2", [16, 24], "layer2"),  # not a mapping
        ("layer3.num_heads", _DELETE, "layer3.num_heads"),  # missing knob
        ("stem_channels", _DELETE, "stem_channels"),
        ("layer5.transformer_channels", [96, 10**9], "layer5.transformer_channels"),  # huge
    ],
)
def test_invalid_space_names_the_field(default_data: dict[str, Any], path: str, value: Any, field: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_space(_mutate(default_data, path, value))
    assert caught.value.field == field


def test_load_space_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as caught:
        load_space(tmp_path / "missing.yaml")
    assert caught.value.field == "--space"
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        load_space(not_mapping)


def test_params_of_rejects_a_config_outside_the_space() -> None:
    cfg = preset("xxs")
    outside = dataclasses.replace(cfg, layer3=dataclasses.replace(cfg.layer3, transformer_blocks=7))
    space = load_space()
    assert not space.contains(outside)
    with pytest.raises(InputError) as caught:
        space.params_of(outside)
    assert caught.value.field == "layer3.transformer_blocks"
