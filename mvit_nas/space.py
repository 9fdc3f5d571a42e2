"""Search spaces: a YAML file of per-knob choices, sampled into :class:`ArchConfig`.

A space file names, for every knob of :class:`ArchConfig`, the list of values
to search (a single value fixes the knob). The one difference from the config
fields is ``ffn_ratio``: a MobileViT stage's ``ffn_dim`` is searched as a
multiple of its ``transformer_channels`` (the published models use 2), so that
every combination of choices is a valid architecture. Loading checks exactly
that, so the space is a plain product: the sampler never proposes an invalid
model, and the number of architectures is the product of the choice counts.

Example::

    space = load_space()                     # the bundled mobilevit_v1.yaml
    study.enqueue_trial(space.params_of(preset("xxs")))
    cfg = space.sample(trial)                # inside an Optuna objective
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mvit_nas.config import (
    MV2_STAGES,
    PRESETS,
    VIT_STAGES,
    ArchConfig,
    MobileViTStageConfig,
    MV2StageConfig,
    preset,
    read_mapping,
    spaces_dir,
    stage_sizes,
)
from mvit_nas.validate import InputError, check_keys, is_number, shown

DEFAULT_SPACE = "mobilevit_v1.yaml"
TRAINING_KNOBS = ("classifier_dropout", "transformer_dropout")
TOP_KNOBS = ("resolution", "stem_channels", "last_layer_exp_factor", "classifier_dropout", "transformer_dropout")
MV2_KNOBS = tuple(f.name for f in dataclasses.fields(MV2StageConfig))
VIT_KNOBS = tuple("ffn_ratio" if f.name == "ffn_dim" else f.name for f in dataclasses.fields(MobileViTStageConfig))


@dataclass(frozen=True)
class SearchSpace:
    """A product of per-knob choices. Knob names are dotted: ``layer3.num_heads``."""

    name: str
    choices: dict[str, tuple[Any, ...]]

    @property
    def cardinality(self) -> int:
        """Number of distinct architectures (every combination is valid)."""
        return math.prod(len(values) for values in self.choices.values())

    @property
    def searched_knobs(self) -> dict[str, tuple[Any, ...]]:
        return {knob: values for knob, values in self.choices.items() if len(values) > 1}

    def decode(self, params: dict[str, Any], num_classes: int = 1000) -> ArchConfig:
        """Knob values (one per knob; fixed knobs may be omitted) -> ArchConfig."""
        values = {knob: params.get(knob, choices[0]) for knob, choices in self.choices.items()}
        stages: dict[str, Any] = {}
        for stage in MV2_STAGES:
            stages[stage] = MV2StageConfig(**{knob: values[f"{stage}.{knob}"] for knob in MV2_KNOBS})
        for stage in VIT_STAGES:
            fields = {knob: values[f"{stage}.{knob}"] for knob in VIT_KNOBS}
            fields["ffn_dim"] = fields.pop("ffn_ratio") * fields["transformer_channels"]
            stages[stage] = MobileViTStageConfig(**fields)
        top = {knob: values[knob] for knob in TOP_KNOBS}
        return ArchConfig(**stages, **top, num_classes=num_classes)

    def sample(self, trial: optuna.Trial, num_classes: int = 1000) -> ArchConfig:
        """Suggest every searched knob on ``trial`` (categorical) and decode."""
        params = {knob: trial.suggest_categorical(knob, list(values)) for knob, values in self.searched_knobs.items()}
        return self.decode(params, num_classes)

    def params_of(self, cfg: ArchConfig) -> dict[str, Any]:
        """The searched knob values of ``cfg`` (for ``study.enqueue_trial``); InputError if outside.

        Dropouts are training settings, not architecture: a value outside the space's
        choices is left for the sampler rather than rejected.
        """
        params = {}
        for knob, value in knob_values(cfg).items():
            if value in self.choices[knob]:
                if knob in self.searched_knobs:
                    params[knob] = value
            elif knob not in TRAINING_KNOBS:
                raise InputError(knob, f"{value!r} is not among the space's choices {list(self.choices[knob])}")
        return params

    def seeds_inside(self) -> dict[str, bool]:
        """For each published model (xxs, xs, s), whether it is a point of this space."""
        return {name: self.contains(preset(name)) for name in PRESETS}

    def contains(self, cfg: ArchConfig) -> bool:
        """Whether ``cfg``'s architecture is a point of this space (dropouts and classes aside)."""
        return all(value in self.choices[knob] or knob in TRAINING_KNOBS for knob, value in knob_values(cfg).items())


def knob_values(cfg: ArchConfig) -> dict[str, Any]:
    """Every knob's value in ``cfg`` (dotted names, ``ffn_ratio`` for ``ffn_dim``), whether or not a space has it."""
    params: dict[str, Any] = {knob: getattr(cfg, knob) for knob in TOP_KNOBS}
    for stage in MV2_STAGES:
        for knob in MV2_KNOBS:
            params[f"{stage}.{knob}"] = getattr(getattr(cfg, stage), knob)
    for stage in VIT_STAGES:
        stage_cfg = getattr(cfg, stage)
        for knob in VIT_KNOBS:
            if knob == "ffn_ratio":
                ratio = stage_cfg.ffn_dim / stage_cfg.transformer_channels
                params[f"{stage}.{knob}"] = int(ratio) if ratio.is_integer() else ratio
            else:
                params[f"{stage}.{knob}"] = getattr(stage_cfg, knob)
    return params


def _choice_list(knob: str, raw: Any) -> tuple[Any, ...]:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise InputError(knob, "choice list is empty; give at least one value")
    for value in values:
        if not is_number(value):
            raise InputError(knob, f"choices must be numbers, got {shown(value)}")
    if len(set(values)) != len(values):
        raise InputError(knob, f"choices repeat a value: {shown(values)}")
    return tuple(values)


def _stage_choices(stage: str, raw: Any, knobs: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, dict):
        raise InputError(stage, f"must be a mapping of knob -> choices, got {type(raw).__name__}")
    check_keys(stage, raw, knobs, knobs, prefix=f"{stage}.")
    return {f"{stage}.{knob}": _choice_list(f"{stage}.{knob}", raw[knob]) for knob in knobs}


def _check_stage_combinations(stage: str, choices: dict[str, tuple[Any, ...]]) -> None:
    """Every combination of a stage's choices must be a valid stage (errors name the knob)."""
    knobs = MV2_KNOBS if stage in MV2_STAGES else VIT_KNOBS
    for ratio in choices.get(f"{stage}.ffn_ratio", ()):
        if not (isinstance(ratio, int) and ratio >= 1):
            raise InputError(f"{stage}.ffn_ratio", f"choices must be integers >= 1 (ffn_dim >= dim), got {ratio!r}")
    for combination in itertools.product(*(choices[f"{stage}.{knob}"] for knob in knobs)):
        fields = dict(zip(knobs, combination, strict=True))
        if stage in MV2_STAGES:
            MV2StageConfig(**fields).validate(stage)
        else:
            fields["ffn_dim"] = fields.pop("ffn_ratio") * fields["transformer_channels"]
            try:
                MobileViTStageConfig(**fields).validate(stage)
            except InputError as error:  # space files name the ratio, not the derived ffn_dim
                if error.field == f"{stage}.ffn_dim":
                    raise InputError(f"{stage}.ffn_ratio", error.problem) from None
                raise


def parse_space(data: dict[str, Any], name: str = "space") -> SearchSpace:
    """Validate a space mapping (as read from YAML) and return the :class:`SearchSpace`."""
    allowed = ("name", *TOP_KNOBS, *MV2_STAGES, *VIT_STAGES)
    check_keys("space", data, allowed, allowed[1:])
    choices: dict[str, tuple[Any, ...]] = {knob: _choice_list(knob, data[knob]) for knob in TOP_KNOBS}
    for stage in MV2_STAGES:
        choices |= _stage_choices(stage, data[stage], MV2_KNOBS)
    for stage in VIT_STAGES:
        choices |= _stage_choices(stage, data[stage], VIT_KNOBS)
    for stage in (*MV2_STAGES, *VIT_STAGES):
        _check_stage_combinations(stage, choices)
    space = SearchSpace(name=str(data.get("name", name)), choices=choices)
    # Cross-stage and top-level rules (resolution range, patch vs feature map, dropouts) are
    # monotone, so checking each top-level choice against the largest patches covers every point.
    largest_patches = {knob: max(values) for knob, values in choices.items() if knob.endswith(("patch_h", "patch_w"))}
    for knob in TOP_KNOBS:
        for value in choices[knob]:
            params = {**largest_patches, knob: value}
            if knob != "resolution":
                params["resolution"] = min(choices["resolution"])
            space.decode(params)
    return space


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Load and validate a space file; ``None`` gives the bundled default space."""
    path = spaces_dir() / DEFAULT_SPACE if path is None else Path(path)
    return parse_space(read_mapping(path, "--space"), name=path.stem)


# --- random valid configs, outside any space (for cross-checks such as cost vs fvcore) ---------

# Patch sizes of a stage are drawn only up to the stage's feature map at the
# config's resolution (validation rejects larger ones), and never above this.
MAX_RANDOM_PATCH = 4


def _channels(rng: random.Random, low: int = 1, high: int = 24) -> int:
    return rng.randint(low, high)


def _mv2_stage(rng: random.Random, max_blocks: int) -> MV2StageConfig:
    return MV2StageConfig(
        out_channels=_channels(rng),
        mv2_exp=rng.randint(1, 6),
        num_blocks=rng.randint(1, max_blocks),
    )


def _vit_stage(rng: random.Random, map_hw: tuple[int, int]) -> MobileViTStageConfig:
    num_heads = rng.choice((1, 1, 2, 3, 4))
    head_dim = rng.choice((4, 4, 5, 6, 8))
    dim = num_heads * head_dim
    return MobileViTStageConfig(
        out_channels=_channels(rng, 2, 32),
        mv2_exp=rng.randint(1, 6),
        transformer_channels=dim,
        ffn_dim=rng.choice((dim, dim + rng.randint(1, 2 * dim), 2 * dim)),
        transformer_blocks=rng.randint(1, 2),
        num_heads=num_heads,
        patch_h=rng.randint(1, min(MAX_RANDOM_PATCH, map_hw[0])),
        patch_w=rng.randint(1, min(MAX_RANDOM_PATCH, map_hw[1])),
    )


def random_config(rng: random.Random) -> ArchConfig:
    """A small, valid, random :class:`ArchConfig` drawn from ``rng`` (deterministic per seed), in no space.

    Varied widths, depths, heads, ffn, patches (many not dividing the map) and resolutions.

    >>> random_config(random.Random(0)) == random_config(random.Random(0))
    True
    """
    resolution = rng.choice((32, 33, 47, 64, 65, 96, 111, 128, 131, 160, rng.randint(32, 160)))
    sizes = stage_sizes(resolution, resolution)
    return ArchConfig(
        stem_channels=_channels(rng, 1, 16),
        layer1=_mv2_stage(rng, max_blocks=2),
        layer2=_mv2_stage(rng, max_blocks=3),
        layer3=_vit_stage(rng, sizes[3]),
        layer4=_vit_stage(rng, sizes[4]),
        layer5=_vit_stage(rng, sizes[5]),
        last_layer_exp_factor=rng.randint(1, 6),
        resolution=resolution,
        num_classes=rng.choice((1, 2, 10, 37, 100, 1000)),
        classifier_dropout=rng.choice((0.0, 0.1, round(rng.random() * 0.9, 6), rng.random() * 0.5)),
        transformer_dropout=rng.choice((0.0, 0.05, 0.1, rng.random() * 0.5)),
    )
