"""The published models fitted to a budget: for each of xxs, xs and s, the variant a user would pick as a baseline.

The published models run at 256 px; under a tight budget they are over it, and an
over-budget seed is never trained, so it is no baseline. What a user would pick
instead is the same model made to fit: :func:`fit_seeds` finds, for each preset
whose layout is a point of the run's space,

1. the preset at the **largest resolution** among the space's ``resolution``
   choices at which it fits (named ``xxs@160``; the preset's own name when that
   is its published 256 px, which the search already runs as a seed);
2. else, at the **smallest resolution**, the preset with every channel knob
   (``stem_channels``, each stage's ``out_channels`` and ``transformer_channels``)
   multiplied by one factor and snapped to the nearest choice of that knob in the
   space (ties to the smaller), every other knob (depths, expansions, heads, ffn
   ratio, patches) as published: the largest factor of 1, 0.95, ..., 0.05 that
   fits (named ``xxs@96w0.5``);
3. else nothing: the preset is over budget at every size in the space.

"Fits" is judged by the run's own latency source, so the trial agrees with the
fit: the latency table's prediction (the trial gets the same number: fits iff
<= budget), else a short measurement (:func:`seed_latency`) that must come in at
<= :data:`MEASURED_MARGIN` x budget, as the trial measures again and a second
measurement on a shared machine moves by a few per cent. A preset whose layout is
not a point of the space (a custom space without its depths or heads) has no
fitted seed, as it has no 256 px seed trial.

Latency grows with resolution and with width, so each list of candidates (largest
first) is searched by bisection: with a generous budget one latency per preset,
at most about ten otherwise; a configuration is never judged twice.

Example (a fake latency of 1 ms per 100 M multiply-adds):

>>> from mvit_nas.cost import count_cost
>>> from mvit_nas.settings import SearchSettings
>>> fits = fit_seeds(SearchSettings(budget_ms=1.5, latency_source="predicted"), lambda c: count_cost(c).flops / 1e8)
>>> {name: fit.name if fit else None for name, fit in fits.items()}
{'xxs': 'xxs@160', 'xs': 'xs@96', 's': 's@96w0.7'}
>>> fits["xxs"].latency_ms <= 1.5 and fits["xxs"].config.resolution == 160
True
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.latency import Calibration, check_available, device_lock, measure_config, measure_judged
from mvit_nas.model import build_model
from mvit_nas.settings import SearchSettings
from mvit_nas.space import TRAINING_KNOBS, SearchSpace, knob_values
from mvit_nas.validate import InputError

if TYPE_CHECKING:
    from mvit_nas.predictor import LatencyTable

__all__ = ["MEASURED_MARGIN", "WIDTH_FACTORS", "FittedSeed", "fit_seeds", "fitted_seeds", "preset_of", "seed_latency"]

MEASURED_MARGIN = 0.95  # a measured fit must leave 5 % of the budget for the trial's own measurement
WIDTH_FACTORS = tuple(round(1.0 - 0.05 * step, 2) for step in range(20))  # 1.0, 0.95, ..., 0.05
# A fitting measurement decides "fits or not" and is repeated by the trial: short timing is enough.
QUICK_TIMING = {"warmup": 3, "min_repeats": 10, "min_seconds": 0.3}

LatencyFunction = Callable[[ArchConfig], float]


@dataclass(frozen=True)
class FittedSeed:
    """A published model sized to a budget: what the search runs as that preset's baseline.

    ``params`` are its searched knob values (for ``study.enqueue_trial``), ``config`` the
    architecture a trial with those params evaluates, ``latency_ms`` the latency that
    decided the fit, ``width`` the channel factor (1.0 for a resolution fit).
    """

    preset: str
    name: str
    config: ArchConfig
    params: dict[str, Any]
    latency_ms: float
    width: float = 1.0

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def published(self) -> bool:
        """Whether this is the published model itself (the 256 px seed fits as it is)."""
        return self.name == self.preset


def preset_of(name: str | None) -> str | None:
    """The preset a seed name is made from: ``"xxs@96w0.5"`` -> ``"xxs"``; None for a name of no preset.

    >>> preset_of("xs@160"), preset_of("s"), preset_of("tiny@64"), preset_of(None)
    ('xs', 's', None, None)
    """
    base = (name or "").split("@", 1)[0]
    return base if base in PRESETS else None


def _channel_knobs(space: SearchSpace) -> list[str]:
    """stem_channels and each stage's out_channels and transformer_channels: every width of the network."""
    return [knob for knob in space.choices if knob.endswith("_channels")]


def _snap(value: float, choices: Sequence[Any]) -> Any:
    """The choice nearest ``value``; of two equally near, the smaller (a fit is what is sought)."""
    return min(choices, key=lambda choice: (abs(choice - value), choice))


def _layout_in_space(space: SearchSpace, values: dict[str, Any]) -> bool:
    """Whether every knob but resolution, widths and dropouts has the preset's value among the space's choices."""
    free = {"resolution", *TRAINING_KNOBS, *_channel_knobs(space)}
    return all(value in space.choices[knob] for knob, value in values.items() if knob not in free)


def _decode(space: SearchSpace, values: dict[str, Any], num_classes: int) -> ArchConfig:
    """The config a trial enqueued with ``values`` evaluates: dropouts as the space has them, not as published."""
    return space.decode({knob: value for knob, value in values.items() if knob not in TRAINING_KNOBS}, num_classes)


def _first_fitting(count: int, fits: Callable[[int], bool]) -> int | None:
    """The first index (candidates from largest to smallest) that fits, by bisection; None if none does.

    The largest is tried first (a generous budget costs one latency), then the smallest.
    """
    if count == 0:
        return None
    if fits(0):
        return 0
    if not fits(count - 1):
        return None
    low, high = 0, count - 1  # low does not fit, high fits
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _by_resolution(space: SearchSpace, values: dict[str, Any], num_classes: int) -> list[tuple[ArchConfig, float]]:
    """The preset at each resolution of the space, largest first; none when its widths are not choices."""
    if not all(values[knob] in space.choices[knob] for knob in _channel_knobs(space)):
        return []
    resolutions = sorted(space.choices["resolution"], reverse=True)
    return [(_decode(space, {**values, "resolution": r}, num_classes), 1.0) for r in resolutions]


def _by_width(space: SearchSpace, values: dict[str, Any], num_classes: int) -> list[tuple[ArchConfig, float]]:
    """The preset at the smallest resolution, narrowed by each factor, widest first; one entry per distinct config."""
    smallest = min(space.choices["resolution"])
    candidates: dict[ArchConfig, float] = {}
    for factor in WIDTH_FACTORS:
        scaled = {knob: _snap(values[knob] * factor, space.choices[knob]) for knob in _channel_knobs(space)}
        cfg = _decode(space, {**values, **scaled, "resolution": smallest}, num_classes)
        candidates.setdefault(cfg, factor)  # the largest factor that gives this config names it
    return list(candidates.items())


def _fit_one(
    name: str, space: SearchSpace, latency: LatencyFunction, limit_ms: float, num_classes: int
) -> FittedSeed | None:
    values = knob_values(preset(name))
    phases = (
        ("resolution", _by_resolution(space, values, num_classes)),
        ("width", _by_width(space, values, num_classes)),
    )
    for phase, candidates in phases:
        index = _first_fitting(len(candidates), lambda i, listed=candidates: latency(listed[i][0]) <= limit_ms)
        if index is None:
            continue
        cfg, width = candidates[index]
        if phase == "width":
            label = f"{name}@{cfg.resolution}w{width:g}"
        else:  # at its published resolution it is the published model, which the search already runs
            label = name if cfg.resolution == preset(name).resolution else f"{name}@{cfg.resolution}"
        return FittedSeed(name, label, cfg, space.params_of(cfg), latency(cfg), width)
    return None


def fit_seeds(
    settings: SearchSettings, latency_ms: LatencyFunction, num_classes: int = 1000
) -> dict[str, FittedSeed | None]:
    """For each preset whose layout is a point of ``settings``' space: its fitted seed, or None if none fits.

    ``latency_ms`` gives a config's latency in ms (the run's: :func:`seed_latency`);
    ``num_classes`` is the classifier size the run's trials have. Deterministic given
    ``latency_ms``: the rule is in the module's docstring.
    """
    space = settings.search_space()
    limit_ms = settings.budget_ms * (1.0 if settings.latency_source == "predicted" else MEASURED_MARGIN)
    judged: dict[ArchConfig, float] = {}

    def latency(cfg: ArchConfig) -> float:
        if cfg not in judged:
            judged[cfg] = float(latency_ms(cfg))
        return judged[cfg]

    fits: dict[str, FittedSeed | None] = {}
    for name in PRESETS:
        if _layout_in_space(space, knob_values(preset(name))):
            fits[name] = _fit_one(name, space, latency, limit_ms, num_classes)
    return fits


def seed_latency(
    settings: SearchSettings, table: LatencyTable | None = None, calibration: Calibration | None = None
) -> LatencyFunction:
    """The run's latency source as a function of a config: the table's prediction, else a short measurement.

    A measurement holds the device to itself, as a trial's does, and is judged as a
    trial's is (against the references, times ``calibration``) when a calibration is
    given; :class:`InputError` (``--device``) when this machine cannot measure the run's spec.
    """
    if settings.latency_source == "predicted":
        if table is None:
            raise ValueError("a predicted-latency run needs its latency table")
        return table.predict
    check_available(settings.latency)
    base = settings.latency
    timing = {key: min(getattr(base, key), value) for key, value in QUICK_TIMING.items()}

    def measured(cfg: ArchConfig) -> float:
        spec = dataclasses.replace(base, height=cfg.resolution, width=cfg.resolution, **timing)
        with device_lock(spec.device).exclusive():
            if calibration is not None:
                return measure_judged(build_model(cfg), spec, calibration).judged_ms
            return measure_config(cfg, spec).median_ms

    return measured


def fitted_seeds(
    settings: SearchSettings, table: LatencyTable | None, num_classes: int, calibration: Calibration | None = None
) -> list[FittedSeed]:
    """What a new run enqueues after its 256 px seeds: the presets that fit, by the run's latency source.

    A driver that cannot measure the run's spec (a cluster's driver without the workers'
    device) warns and fits none: the search runs without them rather than not at all.
    """
    try:
        latency = seed_latency(settings, table, calibration)
    except InputError as error:
        warnings.warn(f"no budget-fitted seeds: this machine cannot measure the run's latency ({error})", stacklevel=2)
        return []
    return [seed for seed in fit_seeds(settings, latency, num_classes).values() if seed is not None]
