"""The accuracy-latency Pareto front of a search, its hypervolume, and how it beats the seeds.

A search has two objectives, accuracy (up) and judged latency in ms (down), and
one constraint, ``latency_over_budget_ms`` (feasible iff <= 0). Optuna already
knows how to find the non-dominated feasible trials (``study.best_trials``) and
how to measure a front (its WFG hypervolume); this module only adds what is
specific to mvit-nas: one point per architecture (:func:`front`, the project's
one meaning of "the front"), and the comparison against the published seeds
xxs/xs/s fitted to the budget (:mod:`mvit_nas.seeds`): an over-budget seed was
never trained and is no baseline, so the front is compared with what a user would
pick instead, the seed at the largest resolution that fits (``xxs@160``) or with
its channels scaled down (``s@96w0.5``).

Example:

>>> round(hypervolume([(0.5, 2.0), (0.7, 4.0)], reference=(0.0, 5.0)), 6)  # 0.5*3 + 0.2*1
1.7

On a run's study::

    study = read_study(Path("runs/demo"))
    [t.number for t in front(study)]  # e.g. [7, 3, 12]
    seed_dominance(study)[0]["dominates"]  # e.g. ["xxs@160", "s@96w0.5"]
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna

# Optuna has no public equivalent: plot_hypervolume_history draws it, nothing returns the value.
from optuna._hypervolume import compute_hypervolume
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.fidelity import RungEntry, read_rungs, rung_front
from mvit_nas.run import FRONT_DROPPED_ATTR, TrialRecord, is_feasible
from mvit_nas.seeds import preset_of

# A rung of successive halving above 0 trains, whatever the proxy: its score is a top-1 fraction, x100 in points.
TRAINED_SCALE = 100.0

__all__ = [
    "SEEDS",
    "dropped",
    "fitted_seed_trials",
    "front",
    "hypervolume",
    "non_dominated",
    "rung_entries",
    "seed_dominance",
    "seed_trials",
]

SEEDS = ("xxs", "xs", "s")


def non_dominated(points: Mapping[int, tuple[float, float]]) -> list[int]:
    """The keys of ``points`` (accuracy up, latency down) no other point dominates, fastest first."""

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in points.values())

    return sorted((k for k, p in points.items() if not dominated(p)), key=lambda k: (points[k][1], k))


def dropped(study: optuna.Study) -> dict[int, str]:
    """The trials the final re-measurement dropped from the front, with why (see :mod:`mvit_nas.recheck`)."""
    return {int(number): reason for number, reason in study.user_attrs.get(FRONT_DROPPED_ATTR, {}).items()}


def rung_entries(study: optuna.Study) -> list[RungEntry]:
    """Every architecture that got a score, as successive halving sees it: latency and its score at each rung.

    Rung 0 is the trial's value; rungs >= 1 are its recorded :class:`~mvit_nas.fidelity.RungResult`
    (a failed rung has no score). Feasible completed trials only, one per architecture
    (a duplicate reuses its original's evaluation and is left out).
    """
    scores: dict[int, dict[int, float]] = {}
    for (number, rung), result in read_rungs(study.user_attrs).items():
        if result.score is not None:
            scores.setdefault(number, {})[rung] = result.score
    entries = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.of(trial)
        if is_feasible(trial) and record.duplicate_of is None and not record.failure:
            rungs = {0: trial.values[0], **scores.get(trial.number, {})}
            entries.append(RungEntry(trial.number, trial.values[1], rungs))
    return entries


def _at_top_rung(trial: FrozenTrial, entry: RungEntry) -> FrozenTrial:
    """A copy of ``trial`` whose accuracy is its highest rung's score, with that rung in ``user_attrs["rung"]``."""
    shown = copy.copy(trial)
    shown.values = [entry.scores[entry.top], trial.values[1]]
    shown.user_attrs = {**trial.user_attrs, "rung": entry.top}
    return shown


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front, one trial per architecture, sorted by latency (fastest first).

    Without drops it is ``study.best_trials`` (Optuna drops infeasible trials);
    trials the final re-measurement found over budget (:func:`dropped`) are left out
    and the front is taken over the rest. A run with successive halving's longer rungs
    takes it by :func:`~mvit_nas.fidelity.rung_front` (scores compared only within a
    rung), and each point's accuracy (``values[0]``) is its highest rung's score, that
    rung in ``user_attrs["rung"]``. A configuration evaluated twice (a
    duplicate reuses the original's values) would appear twice, so only the
    earliest trial of each configuration (by ``config_key``) is kept.

    Example::

        [t.number for t in front(study)]  # e.g. [7, 3, 12]
    """
    gone = dropped(study)
    if read_rungs(study.user_attrs):
        # Successive halving: two architectures compare at the highest rung both reached.
        entries = {e.trial: e for e in rung_entries(study) if e.trial not in gone}
        trials = study.get_trials(deepcopy=False)
        best = [_at_top_rung(trials[n], entries[n]) for n in rung_front(entries.values())]
    elif gone:
        rest = {
            t.number: t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number not in gone and is_feasible(t)
        }
        best = [rest[n] for n in non_dominated({n: (t.values[0], t.values[1]) for n, t in rest.items()})]
    else:
        best = study.best_trials
    trials = sorted((t for t in best if is_feasible(t)), key=lambda t: t.number)
    unique: dict[Any, FrozenTrial] = {}
    for trial in trials:
        key = TrialRecord.of(trial).config_key or ("trial", trial.number)
        unique.setdefault(key, trial)
    return sorted(unique.values(), key=lambda t: (t.values[1], -t.values[0], t.number))


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by ``points`` of (accuracy, latency_ms) up to ``reference`` (accuracy, latency_ms).

    Computed by Optuna's WFG implementation on minimisation-form points
    (-accuracy, latency). Points that do not dominate the reference (slower than
    it, or less accurate) add no area and are left out, so any set of points is
    accepted; no points give 0.0. The unit is accuracy x ms.

    Example:

    >>> hypervolume([], reference=(0.0, 5.0))
    0.0
    >>> round(hypervolume([(0.5, 2.0), (0.9, 7.0)], reference=(0.0, 5.0)), 6)  # 7 ms is past the reference
    1.5
    """
    ref = np.array([-float(reference[0]), float(reference[1])])
    losses = np.array([[-float(acc), float(lat)] for acc, lat in points], dtype=float).reshape(-1, 2)
    losses = losses[np.all(losses <= ref, axis=1)]
    if len(losses) == 0:
        return 0.0
    return float(compute_hypervolume(losses, ref))


def seed_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Each published (256 px) seed's evaluated trial: the earliest COMPLETE one tagged with that seed name.

    A seed interrupted and re-run has two trials (the FAIL and its retry); the
    completed one is what counts. A seed whose every trial failed is absent.
    """
    found: dict[str, FrozenTrial] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE:
            continue
        name = TrialRecord.of(trial).seed
        if name in SEEDS and name not in found:
            found[name] = trial
    return {name: found[name] for name in SEEDS if name in found}


def fitted_seed_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Each budget-fitted seed's completed trial, by name: the baselines the front is compared with.

    A fitted seed (:mod:`mvit_nas.seeds`) is a trial tagged with a variant's name
    (``xxs@160``, ``s@96w0.5``), or a 256 px seed that is within budget as published
    (its fitted variant is itself, so it was not enqueued again). The earliest
    COMPLETE trial per name counts; names come in preset order (xxs, xs, s), each
    preset's published seed first. A variant its own trial measured over budget is
    kept (it is the fitted seed; callers check feasibility); an over-budget 256 px
    seed is not a fitted seed.
    """
    found: dict[str, FrozenTrial] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        name = TrialRecord.of(trial).seed
        if trial.state != TrialState.COMPLETE or name in found or preset_of(name) is None:
            continue
        if name in SEEDS and not is_feasible(trial):
            continue
        found[name] = trial

    def rank(name: str) -> tuple[int, bool]:  # by preset, the published seed first, variants in trial order
        return SEEDS.index(str(preset_of(name))), name not in SEEDS

    return {name: found[name] for name in sorted(found, key=rank)}


def _compare(
    point: FrozenTrial, seed: FrozenTrial, entries: Mapping[int, RungEntry], accuracy_scale: float
) -> dict[str, Any]:
    """A front point against a within-budget seed: both trained, so accuracies compare, at the highest common rung."""
    accuracy, latency = point.values
    seed_accuracy, seed_latency = seed.values
    ours, theirs = entries.get(point.number), entries.get(seed.number)
    rung = min(ours.top, theirs.top) if ours and theirs else 0
    if ours and theirs:
        accuracy, seed_accuracy = ours.scores[rung], theirs.scores[rung]
    saved = seed_latency - latency
    gain = accuracy - seed_accuracy
    return {
        "seed_trial": seed.number,
        "latency_saved_ms": saved,
        "latency_saved_pct": 100.0 * saved / seed_latency if seed_latency > 0 else None,
        "accuracy_gain": gain * (accuracy_scale if rung == 0 else TRAINED_SCALE),
        "dominates": point.number != seed.number
        and accuracy >= seed_accuracy
        and latency <= seed_latency
        and (gain > 0 or saved > 0),
        "same_trial": point.number == seed.number,
        "rung": rung,
    }


def seed_dominance(study: optuna.Study, accuracy_scale: float = 100.0) -> list[dict[str, Any]]:
    """For each front point (latency order), how it compares with every within-budget fitted seed.

    The seeds are :func:`fitted_seed_trials` that their own trial found within budget:
    an over-budget seed was never trained and is no baseline. Each entry: ``trial``,
    ``accuracy``, ``latency_ms``, ``dominates`` (the fitted seed names it dominates:
    at least as accurate and as fast, better in one) and ``versus`` (seed name ->
    ``seed_trial``, ``dominates``, ``accuracy_gain`` in points, i.e. the accuracy
    difference times ``accuracy_scale`` (100 turns a top-1 fraction into percentage
    points; rung 0's scale, the proxy's: a longer rung trains, so its difference is
    always times :data:`TRAINED_SCALE`), ``latency_saved_ms`` and ``latency_saved_pct`` (positive = faster than
    the seed), ``same_trial`` (the front point is the seed) and ``rung`` (the successive-halving
    rung whose scores were compared: the highest both reached; 0 in a single-fidelity run)).

    Example::

        for row in seed_dominance(study):
            print(row["trial"], row["dominates"], row["versus"]["xxs@160"]["latency_saved_ms"])
    """
    seeds = {name: trial for name, trial in fitted_seed_trials(study).items() if is_feasible(trial)}
    entries = {entry.trial: entry for entry in rung_entries(study)}
    rows = []
    for point in front(study):
        versus = {name: _compare(point, seed, entries, accuracy_scale) for name, seed in seeds.items()}
        rows.append(
            {
                "trial": point.number,
                "accuracy": point.values[0],
                "latency_ms": point.values[1],
                "dominates": [name for name, comparison in versus.items() if comparison["dominates"]],
                "versus": versus,
            }
        )
    return rows
