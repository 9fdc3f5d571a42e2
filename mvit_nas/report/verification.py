"""The verification stage's records and report: ``verify.json`` read back, and what it says about the proxy.

:mod:`mvit_nas.verify` trains the chosen models longer and writes one
:class:`VerifyRecord` per (trial, training seed) to ``verify.json``; this module is
its one reader (:func:`read_records`) and turns the records into a
:class:`VerifyReport`: Kendall's tau between proxy and verified ranks, the
seed-to-seed spread, each front point against each budget-fitted seed, and the
verified front.

How a front point "beats" a fitted seed (the noise rule): each model's accuracies
over its N training seeds have a sample variance; pooled over every verified model
(each weighted by its degrees of freedom, n - 1) they give ``s``, the seed-to-seed
standard deviation of one training run. A mean over n seeds varies by
``s / sqrt(n)``, the difference of two models' means by ``s * sqrt(1/n_a + 1/n_b)``.
A front point beats a seed when it is no slower and its verified accuracy gain
exceeds twice that (about a two-sided 95 % test); a gain within that band either
way is "no measurable difference"; below it, "less accurate"; above it but slower,
"more accurate but slower". Pooling gives the noise estimate the degrees of freedom
of all models together (a per-pair Welch test at N = 2 has one each, and almost no
power), assuming every model varies about as much from seed to seed.

Example:

>>> seeds = [[0.50, 0.54], [0.61, 0.60, 0.62]]  # two models' accuracies, one per training seed
>>> [round(x, 4) for x in seed_spread(seeds)]  # mean and max |difference| between two seeds of a model
[0.02, 0.04]
>>> s = pooled_sd(seeds)  # sqrt((0.0008 * 1 + 0.0001 * 2) / 3)
>>> round(s, 4), round(noise_threshold(s, 2, 2), 4)  # 2 * s * sqrt(1/2 + 1/2)
(0.0183, 0.0365)
>>> verdict(0.05, 0.0365, latency_saved_ms=0.2), verdict(0.02, 0.0365, latency_saved_ms=0.2)
('beats', 'no measurable difference')
>>> non_dominated({3: (0.60, 1.0), 4: (0.58, 2.0), 5: (0.70, 3.0)})  # (accuracy, latency) per trial
[3, 5]
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from mvit_nas.report.front import fitted_seed_trials, front, non_dominated
from mvit_nas.run import VERIFY_FILE, is_feasible, load_settings, read_study
from mvit_nas.settings import SearchSettings
from mvit_nas.validate import InputError, first_line

__all__ = [
    "BEATS",
    "NO_DIFFERENCE",
    "SeedComparison",
    "VerifiedModel",
    "VerifyRecord",
    "VerifyReport",
    "build_report",
    "fitted_seeds",
    "kendall",
    "noise_threshold",
    "non_dominated",
    "pooled_sd",
    "read_records",
    "read_report",
    "seed_spread",
    "verdict",
]

NOISE_SDS = 2.0  # a gain beats the noise when it exceeds this many standard deviations of a difference of means
BEATS, NO_DIFFERENCE = "beats", "no measurable difference"
FRONT, EARLIER_FRONT = "front", "earlier front"  # the roles of a verified trial that is not a fitted seed


@dataclass(frozen=True)
class VerifyRecord:
    """One finished job of ``verify.json``: a trial trained with one training seed (the torch seed) for ``epochs``.

    ``accuracy`` is the top-1 on the validation split, None when the training failed
    (``failure`` says why); ``proxy_score`` is what the search's proxy gave the trial.
    """

    trial: int
    seed: int
    epochs: float
    accuracy: float | None
    proxy_score: float
    seconds: float
    node: str | None = None
    hardware: str | None = None
    failure: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerifyRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# --- the statistics (pure functions) ------------------------------------------------------


def seed_spread(groups: Sequence[Sequence[float]]) -> tuple[float | None, float | None]:
    """Mean and max |difference| over every pair of seeds within a model; (None, None) without a pair."""
    gaps = [abs(a - b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]]
    return (statistics.fmean(gaps), max(gaps)) if gaps else (None, None)


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """The seed-to-seed standard deviation of one training run, pooled over models (None without a pair)."""
    freedom = sum(len(group) - 1 for group in groups if len(group) > 1)
    if not freedom:
        return None
    return math.sqrt(sum(statistics.variance(group) * (len(group) - 1) for group in groups if len(group) > 1) / freedom)


def noise_threshold(sd: float | None, n_a: int, n_b: int) -> float | None:
    """The accuracy gain a difference of two means (over ``n_a`` and ``n_b`` seeds) must exceed to be measurable."""
    return None if sd is None else NOISE_SDS * sd * math.sqrt(1 / n_a + 1 / n_b)


def verdict(gain: float, threshold: float | None, latency_saved_ms: float) -> str:
    """A front point against a seed after verification (``gain``: its accuracy minus the seed's)."""
    if threshold is None:
        return "undecided: one seed each, no noise estimate"
    if -threshold <= gain <= threshold:
        return NO_DIFFERENCE
    if gain < 0:
        return "less accurate"
    return BEATS if latency_saved_ms >= 0 else "more accurate but slower"


def kendall(proxy: Sequence[float], verified: Sequence[float]) -> tuple[float | None, float | None]:
    """Kendall's tau between the two rankings and its p-value; (None, None) when undefined (< 2 models, ties)."""
    if len(proxy) < 2:
        return None, None
    from scipy.stats import kendalltau

    result = kendalltau(proxy, verified)
    tau, p = float(result.statistic), float(result.pvalue)
    return (None, None) if math.isnan(tau) else (tau, None if math.isnan(p) else p)


# --- which models ------------------------------------------------------------------------


def fitted_seeds(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The budget-fitted seeds within budget (``"xxs@160"``, or a published seed that fits), by name.

    Over-budget ones are left out: never trained, they have no proxy score to check.
    """
    return {name: trial for name, trial in fitted_seed_trials(study).items() if is_feasible(trial)}


# --- verify.json -------------------------------------------------------------------------


def read_records(run_dir: Path, epochs: float | None = None) -> list[VerifyRecord]:
    """The recorded jobs ([] before the first); with ``epochs``, refuse records of another epoch count."""
    path = Path(run_dir) / VERIFY_FILE
    if not path.exists():
        return []
    try:
        records = [VerifyRecord.from_dict(item) for item in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise InputError("--run-dir", f"{path} is unreadable ({first_line(error)}); delete it to verify anew") from None
    others = sorted({r.epochs for r in records} - {epochs}) if epochs is not None else []
    if others:
        shown = ", ".join(f"{e:g}" for e in others)
        message = (
            f"{path} holds results at {shown} epochs, not {epochs:g}; verify at {shown} or delete it to start anew"
        )
        raise InputError("--epochs", message)
    return records


# --- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedModel:
    """A verified trial: its role (``front``, a fitted seed's tag, or ``earlier front``), latency, proxy score
    and verified accuracies (one per training seed that finished, in seed order)."""

    trial: int
    role: str
    on_front: bool
    latency_ms: float
    proxy_score: float
    accuracies: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        """The verified accuracy: the mean over training seeds."""
        return statistics.fmean(self.accuracies)

    @property
    def is_seed(self) -> bool:
        """Whether this is a budget-fitted seed (its role is the seed's tag)."""
        return self.role not in (FRONT, EARLIER_FRONT)


@dataclass(frozen=True)
class SeedComparison:
    """A front point against a fitted seed after verification; gains are accuracy differences (fractions)."""

    trial: int
    seed: str
    seed_trial: int
    proxy_gain: float
    accuracy_gain: float
    threshold: float | None  # the gain the noise rule asks for (None: no noise estimate)
    latency_saved_ms: float
    verdict: str


@dataclass(frozen=True)
class VerifyReport:
    """What the verification says about the proxy, over every job in ``verify.json`` (see the module docstring).

    ``kendall_tau``: rank agreement of proxy score and verified accuracy over the
    verified models (the run's own trust figure); ``spread_mean``/``spread_max``:
    |difference| between two seeds of a model; ``seed_sd``: the pooled seed-to-seed
    standard deviation; ``verified_front``: trials non-dominated over (verified
    accuracy, latency), fastest first; ``failures``: jobs that did not train.
    """

    epochs: float
    seeds: int
    dataset: str
    input_size: str  # where the models trained, in words (ProxySpec.input_text)
    proxy_kind: str
    models: tuple[VerifiedModel, ...]
    kendall_tau: float | None
    tau_pvalue: float | None
    spread_mean: float | None
    spread_max: float | None
    seed_sd: float | None
    comparisons: tuple[SeedComparison, ...]
    verified_front: tuple[int, ...]
    failures: tuple[VerifyRecord, ...]


def _models_of(records: Sequence[VerifyRecord], study: optuna.Study) -> list[VerifiedModel]:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    on_front = {t.number for t in front(study)}
    roles = {t.number: tag for tag, t in fitted_seeds(study).items()}
    models = []
    for number in dict.fromkeys(r.trial for r in records):  # in the order first recorded
        ok = sorted((r for r in records if r.trial == number and r.accuracy is not None), key=lambda r: r.seed)
        if not ok or number not in trials:
            continue
        role = roles.get(number) or (FRONT if number in on_front else EARLIER_FRONT)
        values = trials[number].values
        accuracies = tuple(float(r.accuracy) for r in ok if r.accuracy is not None)
        models.append(VerifiedModel(number, role, number in on_front, values[1], ok[0].proxy_score, accuracies))
    return sorted(models, key=lambda m: (m.latency_ms, m.trial))


def _comparisons(models: Sequence[VerifiedModel], sd: float | None) -> list[SeedComparison]:
    seeds = [m for m in models if m.is_seed]
    rows = []
    for point in (m for m in models if m.on_front):
        for seed in seeds:
            gain, saved = point.accuracy - seed.accuracy, seed.latency_ms - point.latency_ms
            threshold = noise_threshold(sd, len(point.accuracies), len(seed.accuracies))
            outcome = "is this seed" if point.trial == seed.trial else verdict(gain, threshold, saved)
            proxy_gain = point.proxy_score - seed.proxy_score
            rows.append(SeedComparison(point.trial, seed.role, seed.trial, proxy_gain, gain, threshold, saved, outcome))
    return rows


def build_report(records: Sequence[VerifyRecord], study: optuna.Study, settings: SearchSettings) -> VerifyReport:
    """The report over ``records`` (all of one epoch count), the study giving latencies and roles."""
    models = _models_of(records, study)
    groups = [m.accuracies for m in models]
    sd = pooled_sd(groups)
    tau, p = kendall([m.proxy_score for m in models], [m.accuracy for m in models])
    spread_mean, spread_max = seed_spread(groups)
    front_points = non_dominated({m.trial: (m.accuracy, m.latency_ms) for m in models})
    return VerifyReport(
        epochs=records[0].epochs if records else 0.0,
        seeds=max((len(g) for g in groups), default=0),
        dataset=settings.dataset,
        input_size=settings.proxy.input_text(),
        proxy_kind=settings.proxy.kind,
        models=tuple(models),
        kendall_tau=tau,
        tau_pvalue=p,
        spread_mean=spread_mean,
        spread_max=spread_max,
        seed_sd=sd,
        comparisons=tuple(_comparisons(models, sd)),
        verified_front=tuple(front_points),
        failures=tuple(r for r in records if r.accuracy is None),
    )


def read_report(run_dir: str | Path, study: optuna.Study | None = None) -> VerifyReport | None:
    """The report of the run's ``verify.json``; None when the run was never verified."""
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    if not records:
        return None
    study = read_study(run_dir) if study is None else study
    return build_report(records, study, load_settings(run_dir))
