"""``summary.md``: a run in one page: settings, trial counts, hypervolume, the front, the front against the seeds,
and the verification (when the run was verified).

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

from mvit_nas.fidelity import RungEntry, read_rungs
from mvit_nas.latency import LatencyStats
from mvit_nas.latency.relative import CONFIDENCE
from mvit_nas.report.front import (
    SEEDS,
    dropped,
    fitted_seed_trials,
    hypervolume,
    rung_entries,
    seed_dominance,
    seed_trials,
)
from mvit_nas.report.tables import accuracy_scale, front_units, markdown_table, spec_text
from mvit_nas.report.verification import BEATS, VerifyReport
from mvit_nas.run import INTERRUPTED, TrialRecord, is_feasible, is_finished
from mvit_nas.seeds import preset_of
from mvit_nas.settings import SearchSettings

__all__ = ["summary_markdown", "verify_section"]


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
        f"| budget | {settings.budget_ms:g} ms (judged latency: ratio to the reference x calibration) |",
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


def _rungs_section(table: pd.DataFrame, settings: SearchSettings) -> list[str]:
    """Successive halving: how many architectures each rung trained, for how long, and its share of the training."""
    epochs = settings.rung_epochs()
    if len(epochs) == 1:
        return []
    trained = table[table["accuracy"].notna() & table["duplicate_of"].isna()]
    counts = [(len(trained), 0, trained["proxy_seconds"].sum())]  # (trained, failed, seconds) per rung
    for rung in range(1, len(epochs)):
        ran = table[table[f"rung{rung}_epochs"].notna()] if f"rung{rung}_epochs" in table else table.iloc[:0]
        failed = int(ran[f"rung{rung}_failure"].notna().sum()) if len(ran) else 0
        counts.append((len(ran) - failed, failed, ran[f"rung{rung}_seconds"].sum() if len(ran) else 0.0))
    frame = pd.DataFrame(counts, columns=["scored", "failed", "seconds"])
    # A zero-cost rung 0 trains nothing: its epochs would be the first trained rung's base, not its cost.
    kind = settings.proxy.kind
    frame.insert(0, "epochs", [f"— ({kind})" if kind != "train" else f"{epochs[0]:g}", *map("{:g}".format, epochs[1:])])
    frame.insert(0, "rung", range(len(epochs)))
    total = frame["seconds"].sum()
    frame["share of training"] = [f"{100 * s / total:.0f}%" if total else "—" for s in frame["seconds"]]
    frame["seconds"] = [_fmt(s, 0) for s in frame["seconds"]]
    return [
        "## Successive halving",
        "",
        f"eta {settings.fidelity.eta}: the best 1/{settings.fidelity.eta} of each rung (non-dominated sorting over "
        "accuracy and latency) is trained afresh for the next rung's epochs; the front compares two architectures "
        "at the highest rung both reached, and shows each point's highest rung.",
        "",
        markdown_table(frame),
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


def _judged_interval(stats: LatencyStats | None) -> str:
    """The judged latency's bootstrap interval; "—" for a latency timed raw, not judged against the references."""
    if stats is None or stats.ratio is None:
        return "—"
    low, high = stats.judged_interval_ms
    return f"{_fmt(low, 3)} to {_fmt(high, 3)}"


def _front_table(
    front_trials: Sequence[FrozenTrial],
    table: pd.DataFrame,
    files: Mapping[int, Sequence[str]],
    settings: SearchSettings,
) -> pd.DataFrame:
    rows = table.set_index("number").loc[[t.number for t in front_trials]]
    raw_spreads = zip(rows["latency_p10_ms"], rows["latency_p90_ms"], strict=True)
    latencies = [TrialRecord.of(t).latency for t in front_trials]
    units = front_units(settings, front_trials)
    if len(set(units)) == 1:
        accuracy = {f"accuracy ({units[0][1]})": [_fmt(t.values[0] * units[0][0], 2) for t in front_trials]}
    else:  # a zero-cost rung 0 beside trained rungs: each score says what it is
        cells = [f"{_fmt(t.values[0] * scale, 2)} {unit}" for t, (scale, unit) in zip(front_trials, units, strict=True)]
        accuracy = {"score": cells}
    frame = pd.DataFrame(
        {
            "trial": rows.index,
            **accuracy,
            "latency (ms)": [_fmt(t.values[1], 3) for t in front_trials],
            f"judged {CONFIDENCE:.0%} interval (ms)": [_judged_interval(stats) for stats in latencies],
            "raw p10 to p90 (ms)": [f"{_fmt(p10, 3)} to {_fmt(p90, 3)}" for p10, p90 in raw_spreads],
            "params (M)": [_fmt(p / 1e6, 3) if pd.notna(p) else "—" for p in rows["params"]],
            "MMACs": [_fmt(f / 1e6, 1) if pd.notna(f) else "—" for f in rows["flops"]],
            "resolution": list(rows["resolution"]),
            "seed": list(rows["seed"]),
            "files": [", ".join(files.get(t.number, [])) for t in front_trials],
        }
    )
    if any("rung" in t.user_attrs for t in front_trials):  # successive halving: the rung each score is from
        frame.insert(frame.columns.get_loc("seed"), "rung", [t.user_attrs.get("rung", 0) for t in front_trials])
    return frame


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
    gone = dropped(study)
    if gone:
        lines += ["Dropped from the front by its final re-measurement (`front_latency.json` has every point's):", ""]
        lines += [f"- trial {number}: {reason}" for number, reason in sorted(gone.items())]
        lines.append("")
    if not front_trials:
        return [*lines, f"The front is empty: {_empty_front_reason(study, budget_ms)}.", ""]
    units = set(front_units(settings, front_trials))
    if len(units) == 1:
        (scale, unit), volume = units.pop(), hypervolume([t.values for t in front_trials], (0.0, budget_ms))
        lines.append(
            f"Hypervolume: **{volume:.4g}** (accuracy x ms) against the reference (accuracy 0, latency "
            f"{budget_ms:g} ms); divided by the budget, **{volume / budget_ms * scale:.3g} {unit}**: "
            "the best accuracy reachable within a latency limit, averaged over limits from 0 to the budget."
        )
    else:
        lines.append(
            f"No hypervolume: the front holds {settings.proxy.kind} scores (rung 0) beside trained accuracies "
            "(longer rungs), which do not add up."
        )
    lines += ["", markdown_table(_front_table(front_trials, table, files, settings)), ""]
    if weights:
        lines += ["Model weights in the ONNX / timm exports:", ""]
        lines += [f"- trial {number}: {source}" for number, source in weights.items()]
        lines.append("")
    return lines


def _over_budget(trial: FrozenTrial, variants: Sequence[str]) -> str:
    """Why a completed seed is no baseline: over budget, and what stands in for it."""
    record = TrialRecord.of(trial)
    if record.seed not in SEEDS:  # a fitted variant that its own trial found over budget after all
        return "no, over budget in its own trial"
    if not variants:
        return "no, over budget at every size in the space"
    resolution = record.config.resolution if record.config else "its published"
    return f"no, over budget at {resolution} px; fitted variant: {', '.join(variants)}"


def _seed_row(
    name: str,
    trial: FrozenTrial | None,
    variants: Sequence[str],
    settings: SearchSettings,
    entries: Mapping[int, RungEntry] | None,
) -> dict[str, Any]:
    """A seed's row; with successive halving's ``entries``, its score at its highest rung, as the front's points."""
    if trial is None:
        return {"seed": name, "trial": "—", "state": "not run"}
    failure = TrialRecord.of(trial).failure
    done = trial.state == TrialState.COMPLETE
    feasible = done and is_feasible(trial)
    row = {
        "seed": name,
        "trial": trial.number,
        "state": trial.state.name + (f" ({failure})" if failure else ""),
        "feasible": ("yes" if feasible else _over_budget(trial, variants)) if done else "—",
    }
    missing = "not trained" if done else "—"
    entry = entries.get(trial.number) if entries is not None else None
    rung = entry.top if entry else 0
    scale, unit = accuracy_scale(settings, rung)
    value = (entry.scores[rung] if entry else trial.values[0]) if feasible else math.nan
    if entries is None:
        row[f"accuracy ({unit})"] = _fmt(value * scale, 2) if feasible else missing
    else:
        row["score"] = f"{_fmt(value * scale, 2)} {unit}" if feasible else missing
        row["rung"] = str(rung) if feasible else "—"  # text: a "not run" row, empty, would make it float
    return {**row, "latency (ms)": _fmt(trial.values[1], 3) if done else "—"}


def _seeds_table(study: optuna.Study, settings: SearchSettings) -> pd.DataFrame:
    """One row per 256 px seed, then one per budget-fitted variant of it (``xxs@160``): the evaluated trial,
    else the latest attempt (failed, waiting or running), else "not run"."""
    trials = study.get_trials(deepcopy=False)
    evaluated = {**seed_trials(study), **fitted_seed_trials(study)}
    entries = {entry.trial: entry for entry in rung_entries(study)} if read_rungs(study.user_attrs) else None
    tagged: dict[str, list[FrozenTrial]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        name = TrialRecord.of(trial).seed
        if preset_of(name) is not None:
            tagged.setdefault(str(name), []).append(trial)
    rows = []
    for preset in SEEDS:
        variants = [name for name in tagged if name != preset and preset_of(name) == preset]
        for name in (preset, *variants):
            attempt = evaluated.get(name) or (tagged[name][-1] if name in tagged else None)
            rows.append(_seed_row(name, attempt, variants, settings, entries))
    return pd.DataFrame(rows)


def _versus_cell(comparison: dict[str, Any] | None, settings: SearchSettings) -> str:
    if comparison is None:
        return "—"
    if comparison.get("same_trial"):
        return "is this seed"
    saved_ms, saved_pct = comparison["latency_saved_ms"], comparison["latency_saved_pct"]
    pct = f" ({_fmt(abs(saved_pct), 0)} %)" if saved_pct is not None else ""
    saved = f"{_fmt(abs(saved_ms), 2)} ms{pct} {'faster' if saved_ms >= 0 else 'slower'}"
    _, unit = accuracy_scale(settings, comparison["rung"])  # compared at the highest rung both reached
    gain = f"{_fmt(comparison['accuracy_gain'], 1, sign=True)} {'points' if unit == '%' else unit}"
    verdict = "**dominates**" if comparison["dominates"] else "does not dominate"
    return f"{verdict}: {gain}, {saved}"


def _seeds_comparison(study: optuna.Study, front_trials: Sequence[FrozenTrial], settings: SearchSettings) -> list[str]:
    """Each front point against each budget-fitted seed, and why a seed no front point dominates is not beaten."""
    seeds = {name: trial for name, trial in fitted_seed_trials(study).items() if is_feasible(trial)}
    dominance = seed_dominance(study, accuracy_scale=accuracy_scale(settings)[0])
    if not dominance:
        return ["No front point to compare with the seeds."]
    if not seeds:
        return ["No budget-fitted seed completed within budget, so there is nothing to compare the front with."]
    comparison = pd.DataFrame(
        [
            {"trial": row["trial"], **{name: _versus_cell(row["versus"].get(name), settings) for name in seeds}}
            for row in dominance
        ]
    )
    lines = [
        "The front against the seeds fitted to the budget: each published model at the largest resolution of the "
        "space within the budget (`xxs@160`; its own name when it fits as published), else at the smallest "
        "resolution with its channels scaled down (`s@96w0.5`). An over-budget seed was never trained: it is no "
        "baseline. Each cell: whether the front point dominates the fitted seed (at least as accurate and as fast, "
        "better in one), the accuracy gain (points of top-1, or the proxy's score at rung 0 of a zero-cost proxy) "
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
        else:
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
    verification: VerifyReport | None = None,
) -> str:
    """The text of ``summary.md``.

    ``table`` is :func:`~mvit_nas.report.tables.trials_frame` of ``study``, ``files``
    the exported files per front trial (paths relative to the export folder),
    ``weights`` where each exported model's weights came from, and ``verification``
    the run's verification report (``verify.json``), if it has one.
    """
    lines = [f"# mvit-nas run `{run_name}`", ""]
    lines += _settings_section(study, settings)
    lines += _trials_section(study)
    lines += _rungs_section(table, settings)
    lines += _front_section(study, settings, front_trials, table, files, weights)
    lines += ["## Front against the seeds", "", markdown_table(_seeds_table(study, settings)), ""]
    lines += _seeds_comparison(study, front_trials, settings)
    if verification is not None:
        lines += ["", *verify_section(verification)]
    return "\n".join(lines) + "\n"


# --- the verification ------------------------------------------------------------------


def _points(fraction: float | None) -> str:
    """An accuracy fraction (or a difference of two) in percentage points, for a table cell."""
    return _fmt(None if fraction is None else fraction * 100, 2)


def _verified_table(report: VerifyReport, proxy_scale: float, proxy_unit: str) -> pd.DataFrame:
    on_front = set(report.verified_front)
    return pd.DataFrame(
        {
            "trial": [m.trial for m in report.models],
            "model": [m.role for m in report.models],
            "latency (ms)": [_fmt(m.latency_ms, 3) for m in report.models],
            f"proxy ({proxy_unit})": [_fmt(m.proxy_score * proxy_scale, 2) for m in report.models],
            "verified (%)": [_points(m.accuracy) for m in report.models],
            "per seed (%)": [", ".join(_points(a) for a in m.accuracies) for m in report.models],
            "verified front": ["yes" if m.trial in on_front else "" for m in report.models],
        }
    )


def _verified_comparison(report: VerifyReport, proxy_scale: float, proxy_unit: str) -> list[str]:
    if not report.comparisons:
        return ["No verified front point and fitted seed to compare."]
    rows = pd.DataFrame(
        {
            "trial": [c.trial for c in report.comparisons],
            "seed": [f"{c.seed} (trial {c.seed_trial})" for c in report.comparisons],
            f"proxy gain ({proxy_unit})": [_fmt(c.proxy_gain * proxy_scale, 2, sign=True) for c in report.comparisons],
            "verified gain (points)": [_fmt(c.accuracy_gain * 100, 2, sign=True) for c in report.comparisons],
            "noise band (points)": [_points(c.threshold) for c in report.comparisons],
            "latency saved (ms)": [_fmt(c.latency_saved_ms, 3, sign=True) for c in report.comparisons],
            "verdict": [f"**{c.verdict}**" if c.verdict == BEATS else c.verdict for c in report.comparisons],
        }
    )
    return [
        "A front point **beats** a seed when it is no slower and its verified gain exceeds the noise band: twice "
        "the standard deviation of a difference of two seed means, the seed-to-seed variance pooled over every "
        "verified model. Within the band either way there is no measurable difference.",
        "",
        markdown_table(rows),
    ]


def verify_section(report: VerifyReport) -> list[str]:
    """The verification in Markdown lines: trust in the proxy (Kendall tau), seed noise, models, front vs seeds."""
    proxy_scale, proxy_unit = (100.0, "%") if report.proxy_kind == "train" else (1.0, f"{report.proxy_kind} score")
    tau = "n/a (fewer than two models, or all tied)" if report.kendall_tau is None else f"**{report.kendall_tau:.2f}**"
    p_value = f"p = {report.tau_pvalue:.2g}, " if report.tau_pvalue is not None else ""
    # A spread needs a model with two finished seeds; so does the pooled standard deviation.
    spread = (
        f"mean {_points(report.spread_mean)} points, max {_points(report.spread_max)} points "
        f"(pooled standard deviation of one run {_points(report.seed_sd)} points)"
        if report.spread_mean is not None
        else "n/a (no model has two finished seeds)"
    )
    front = ", ".join(str(n) for n in report.verified_front) or "none"
    lines = [
        "## Verification: longer training",
        "",
        f"{len(report.models)} models (front points and budget-fitted seeds) trained {report.epochs:g} epochs, "
        f"up to {report.seeds} training seeds each, on {report.dataset} (scored on its held-out validation split) "
        f"at {report.input_size}; every job is in `verify.json`, the plot in `verify.png`.",
        "",
        f"- Kendall tau between the proxy's and the verified ranking: {tau} ({p_value}{len(report.models)} models): "
        "1 means the proxy orders the models as longer training does, 0 that it tells nothing.",
        f"- Seed-to-seed spread (|difference| between two seeds of a model): {spread}.",
        f"- Verified front (non-dominated over verified accuracy and latency): trials {front}.",
        "",
        markdown_table(_verified_table(report, proxy_scale, proxy_unit)),
        "",
        "### Front against the fitted seeds, after verification",
        "",
        *_verified_comparison(report, proxy_scale, proxy_unit),
    ]
    if report.failures:
        lines += ["", "Jobs that did not train:", ""]
        lines += [f"- trial {r.trial}, seed {r.seed}: {r.failure}" for r in report.failures]
    return lines
