"""``summary.md``: a run in one page: settings, trial counts, hypervolume, the front, the front against the seeds.

Example::

    text = summary_markdown(study, settings, "demo", front(study), trials_frame(study), files={}, weights={})
    print(text.splitlines()[0])  # "# mvit-nas run `demo`"
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.report.front import SEEDS, hypervolume, seed_dominance, seed_trials
from mvit_nas.report.tables import accuracy_scale, markdown_table, spec_text
from mvit_nas.run import INTERRUPTED, TrialRecord, is_feasible, is_finished
from mvit_nas.settings import SearchSettings

__all__ = ["summary_markdown"]


def _fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    """A number for a table cell; "—" when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _settings_section(study: optuna.Study, settings: SearchSettings) -> list[str]:
    space = settings.space
    space_name = "default (bundled)" if space is None else str(space.get("name", "custom"))
    return [
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| budget | {settings.budget_ms:g} ms (median latency) |",
        f"| latency spec | {spec_text(study, settings)} |",
        f"| proxy | `{json.dumps(settings.proxy.to_dict(), sort_keys=True)}` |",
        f"| dataset | {settings.dataset} |",
        f"| sampler | {settings.sampler}, seed {settings.seed} |",
        f"| space | {space_name} |",
        "",
    ]


def _trials_section(study: optuna.Study) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    records = [TrialRecord.of(t) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    pairs = zip(trials, records, strict=True)
    interrupted = sum(r.failure == INTERRUPTED for t, r in pairs if t.state == TrialState.FAIL)
    counts = [
        len(trials),
        sum(is_finished(t) for t in trials),
        len(complete),
        sum(is_feasible(t) for t in complete),
        sum(not is_feasible(t) for t in complete),
        len(failed) - interrupted,
        interrupted,
        sum(r.duplicate_of is not None for r in records),
        sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials),
    ]
    return [
        "## Trials",
        "",
        "| trials | finished | completed | feasible | over budget | failed | interrupted | duplicates | pending |",
        "|---|---|---|---|---|---|---|---|---|",
        "| " + " | ".join(map(str, counts)) + " |",
        "",
    ]


def _empty_front_reason(study: optuna.Study, budget_ms: float) -> str:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not trials:
        return "the study has no trials yet"
    if not complete:
        failed = sum(t.state == TrialState.FAIL for t in trials)
        pending = len(trials) - failed
        return f"no trial has completed ({failed} failed, {pending} waiting or running)"
    fastest = min(complete, key=lambda t: t.values[1])
    return (
        f"all {len(complete)} completed trials are over the {budget_ms:g} ms budget; "
        f"the fastest, trial {fastest.number}, measured {fastest.values[1]:.3g} ms"
    )


def _front_table(
    front_trials: Sequence[FrozenTrial],
    table: pd.DataFrame,
    files: Mapping[int, Sequence[str]],
    scale: float,
    unit: str,
) -> pd.DataFrame:
    rows = table.set_index("number").loc[[t.number for t in front_trials]]
    spreads = zip(rows["latency_p10_ms"], rows["latency_p90_ms"], strict=True)
    return pd.DataFrame(
        {
            "trial": rows.index,
            f"accuracy ({unit})": [_fmt(t.values[0] * scale, 2) for t in front_trials],
            "latency (ms)": [_fmt(t.values[1], 3) for t in front_trials],
            "p10 to p90 (ms)": [f"{_fmt(p10, 3)} to {_fmt(p90, 3)}" for p10, p90 in spreads],
            "params (M)": [_fmt(p / 1e6, 3) if pd.notna(p) else "—" for p in rows["params"]],
            "MMACs": [_fmt(f / 1e6, 1) if pd.notna(f) else "—" for f in rows["flops"]],
            "resolution": list(rows["resolution"]),
            "seed": list(rows["seed"]),
            "files": [", ".join(files.get(t.number, [])) for t in front_trials],
        }
    )


def _front_section(
    study: optuna.Study,
    settings: SearchSettings,
    front_trials: Sequence[FrozenTrial],
    table: pd.DataFrame,
    files: Mapping[int, Sequence[str]],
    weights: Mapping[int, str],
) -> list[str]:
    budget_ms = settings.budget_ms
    lines = ["## Pareto front", ""]
    if not front_trials:
        return [*lines, f"The front is empty: {_empty_front_reason(study, budget_ms)}.", ""]
    scale, unit = accuracy_scale(settings)
    volume = hypervolume([t.values for t in front_trials], (0.0, budget_ms))
    lines += [
        f"Hypervolume: **{volume:.4g}** (accuracy x ms) against the reference (accuracy 0, latency "
        f"{budget_ms:g} ms); divided by the budget, **{volume / budget_ms * scale:.3g} {unit}**: "
        "the best accuracy reachable within a latency limit, averaged over limits from 0 to the budget.",
        "",
        markdown_table(_front_table(front_trials, table, files, scale, unit)),
        "",
    ]
    if weights:
        lines += ["Model weights in the ONNX / timm exports:", ""]
        lines += [f"- trial {number}: {source}" for number, source in weights.items()]
        lines.append("")
    return lines


def _seed_row(name: str, trial: FrozenTrial | None, scale: float, unit: str) -> dict[str, Any]:
    if trial is None:
        return {"seed": name, "trial": "—", "state": "not run"}
    failure = TrialRecord.of(trial).failure
    done = trial.state == TrialState.COMPLETE
    feasible = done and is_feasible(trial)
    accuracy = _fmt(trial.values[0] * scale, 2) if feasible else ("not trained" if done else "—")
    return {
        "seed": name,
        "trial": trial.number,
        "state": trial.state.name + (f" ({failure})" if failure else ""),
        "feasible": ("yes" if feasible else "no, over budget") if done else "—",
        f"accuracy ({unit})": accuracy,
        "latency (ms)": _fmt(trial.values[1], 3) if done else "—",
    }


def _seeds_table(study: optuna.Study, scale: float, unit: str) -> pd.DataFrame:
    """One row per seed: its evaluated trial, else its latest attempt (failed, waiting or running), else "not run"."""
    trials = study.get_trials(deepcopy=False)
    seeds = seed_trials(study)
    rows = []
    for name in SEEDS:
        tagged = [t for t in trials if TrialRecord.of(t).seed == name]
        rows.append(_seed_row(name, seeds.get(name) or (tagged[-1] if tagged else None), scale, unit))
    return pd.DataFrame(rows)


def _versus_cell(comparison: dict[str, Any] | None, unit: str) -> str:
    if comparison is None:
        return "—"
    if comparison.get("same_trial"):
        return "is this seed"
    saved_ms, saved_pct = comparison["latency_saved_ms"], comparison["latency_saved_pct"]
    pct = f" ({_fmt(abs(saved_pct), 0)} %)" if saved_pct is not None else ""
    saved = f"{_fmt(abs(saved_ms), 2)} ms{pct} {'faster' if saved_ms >= 0 else 'slower'}"
    if comparison["accuracy_gain"] is None:
        return f"**dominates** (seed over budget, not trained); {saved}"
    gain = f"{_fmt(comparison['accuracy_gain'], 1, sign=True)} {unit}"
    verdict = "**dominates**" if comparison["dominates"] else "does not dominate"
    return f"{verdict}: {gain}, {saved}"


def _seeds_comparison(study: optuna.Study, front_trials: Sequence[FrozenTrial], scale: float, points: str) -> list[str]:
    """Each front point against each seed, and why a seed no front point dominates is not beaten."""
    seeds = seed_trials(study)
    dominance = seed_dominance(study, accuracy_scale=scale)
    if not dominance:
        return ["No front point to compare with the seeds."]
    if not seeds:
        return ["No seed trial completed, so there is nothing to compare the front with."]
    comparison = pd.DataFrame(
        [
            {"trial": row["trial"], **{name: _versus_cell(row["versus"].get(name), points) for name in seeds}}
            for row in dominance
        ]
    )
    lines = [
        "Each cell: whether the front point dominates the seed (at least as accurate and as fast, better "
        f"in one; any within-budget point dominates an over-budget seed), the accuracy gain in {points} "
        "and the latency saved.",
        "",
        markdown_table(comparison),
    ]
    dominated = {name for row in dominance for name in row["dominates"]}
    on_front = {t.number for t in front_trials}
    for name, seed in seeds.items():
        if name in dominated:
            continue
        if seed.number in on_front:
            lines += ["", f"{name} (trial {seed.number}) is itself on the front: no trial beats it on both."]
        elif is_feasible(seed):
            lines += ["", f"No front point dominates {name}: a front point ties with it."]
    return lines


def summary_markdown(
    study: optuna.Study,
    settings: SearchSettings,
    run_name: str,
    front_trials: Sequence[FrozenTrial],
    table: pd.DataFrame,
    files: Mapping[int, Sequence[str]],
    weights: Mapping[int, str],
) -> str:
    """The text of ``summary.md``.

    ``table`` is :func:`~mvit_nas.report.tables.trials_frame` of ``study``, ``files``
    the exported files per front trial (paths relative to the export folder) and
    ``weights`` where each exported model's weights came from.
    """
    scale, unit = accuracy_scale(settings)
    points = "points" if unit == "%" else unit
    lines = [f"# mvit-nas run `{run_name}`", ""]
    lines += _settings_section(study, settings)
    lines += _trials_section(study)
    lines += _front_section(study, settings, front_trials, table, files, weights)
    lines += ["## Front against the seeds", "", markdown_table(_seeds_table(study, scale, unit)), ""]
    lines += _seeds_comparison(study, front_trials, scale, points)
    return "\n".join(lines) + "\n"
