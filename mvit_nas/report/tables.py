"""The run as tables: one row per trial (``trials.csv``), the front's rows (``pareto.csv``), Markdown tables.

Also the few descriptions of a run every report shares: the resolution a latency
was measured at, the latency spec of the whole run, and how accuracy is shown.

Example:

>>> resolution_label(LatencySpec(height=128, width=96))
'128x96'
>>> print(markdown_table(pd.DataFrame({"trial": [3], "seed": [None]})))
| trial | seed |
|---|---|
| 3 | — |
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from mvit_nas.fidelity import read_rungs
from mvit_nas.latency import LatencySpec, LatencyStats
from mvit_nas.report.front import TRAINED_SCALE
from mvit_nas.run import CONSTRAINT, TrialRecord, is_feasible
from mvit_nas.settings import SearchSettings

__all__ = [
    "accuracy_scale",
    "front_units",
    "markdown_table",
    "pareto_frame",
    "resolution_label",
    "spec_text",
    "trials_frame",
]

SPEC_FIELDS = ("device", "backend", "batch_size", "resolution", "dtype", "threads")
LATENCY_STATS = ("median", "p10", "p90", "mean")
# What a judged latency adds (mvit_nas.latency.relative): the value the budget was judged on, the ratio to the
# (bracketing) reference with its interval, that reference's latencies, and whether a straddling first
# measurement was redone.
_JUDGED_COLUMNS = {
    "latency_judged_ms": "judged_ms",
    "latency_ratio": "ratio",
    "latency_ratio_low": "ratio_low",
    "latency_ratio_high": "ratio_high",
    "latency_reference_ms": "reference_ms",
    "latency_reference_median_ms": "reference_median_ms",
    "latency_remeasured": "remeasured",
}
_LATENCY_COLUMNS = [
    *(f"latency_{stat}_ms" for stat in LATENCY_STATS),
    *("latency_n", "latency_discarded", *_JUDGED_COLUMNS, *SPEC_FIELDS),
]
_COLUMNS = [
    *("number", "state", "seed", "config_key", "config", "params", "flops"),
    *_LATENCY_COLUMNS,
    *(
        CONSTRAINT,
        "accuracy",
        "proxy_resolution",
        "proxy_seconds",
        "feasible",
        "duration_s",
        "failure",
        "node",
        "hardware",
    ),
    *("duplicate_of", "retry_of", "datetime_start", "datetime_complete"),
]


def resolution_label(spec: LatencySpec) -> int | str:
    """The input size a latency was measured at: ``256`` when square, ``"256x192"`` (height x width) otherwise."""
    return spec.height if spec.height == spec.width else f"{spec.height}x{spec.width}"


def accuracy_scale(settings: SearchSettings, rung: int = 0) -> tuple[float, str]:
    """(factor, unit) of a score at ``rung``: a top-1 fraction is shown in percent, a zero-cost score as it is.

    Rung 0 is the proxy's score; a longer rung of successive halving trains, so its score
    is a top-1 fraction whatever the proxy (a naswot-screened run's front is in percent).
    """
    if rung == 0 and settings.proxy.kind != "train":
        return 1.0, f"{settings.proxy.kind} score"
    return TRAINED_SCALE, "%"


def front_units(settings: SearchSettings, front_trials: Sequence[FrozenTrial]) -> list[tuple[float, str]]:
    """Each front point's (scale, unit) (:func:`accuracy_scale`): its score is from its highest rung (0 if none)."""
    return [accuracy_scale(settings, t.user_attrs.get("rung", 0)) for t in front_trials]


def spec_text(study: optuna.Study, settings: SearchSettings) -> str:
    """The latency spec every trial was measured under, from the trials themselves, else from the settings.

    The trials are what was measured; a field that differs between them is "mixed"
    (the resolution "per trial", as resolutions may be searched).
    """
    records = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
    measured = [record.latency.spec for record in records if record.latency]

    def value(name: str) -> str:
        def of(spec: LatencySpec) -> str:
            return str(resolution_label(spec) if name == "resolution" else getattr(spec, name))

        seen = {of(spec) for spec in measured}
        if len(seen) > 1:
            return "per trial" if name == "resolution" else "mixed"
        return seen.pop() if seen else of(settings.latency)

    resolution = value("resolution")
    resolution = resolution if resolution == "per trial" else f"{resolution} px"
    return (
        f"{value('device')}, {value('backend')}, batch {value('batch_size')}, {value('dtype')}, "
        f"{value('threads')} threads, resolution {resolution}"
    )


# --- trials.csv --------------------------------------------------------------------------


def _latency_cells(latency: LatencyStats | None) -> dict[str, Any]:
    if latency is None:
        return {name: None for name in _LATENCY_COLUMNS}
    cells: dict[str, Any] = {f"latency_{stat}_ms": getattr(latency, f"{stat}_ms") for stat in LATENCY_STATS}
    cells.update(latency_n=latency.n, latency_discarded=latency.discarded)
    measured_so = latency.ratio is not None
    cells.update({column: getattr(latency, name) if measured_so else None for column, name in _JUDGED_COLUMNS.items()})
    for name in SPEC_FIELDS:
        cells[name] = resolution_label(latency.spec) if name == "resolution" else getattr(latency.spec, name)
    return cells


def _trial_row(trial: FrozenTrial, record: TrialRecord) -> dict[str, Any]:
    feasible = record.feasible
    if feasible is None and trial.constraints:
        feasible = is_feasible(trial)
    config = record.config.to_dict() if record.config is not None else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "seed": record.seed,
        "config_key": record.config_key,
        "config": json.dumps(config, sort_keys=False) if config is not None else None,
        "params": record.params,
        "flops": record.flops,
        **_latency_cells(record.latency),
        CONSTRAINT: trial.constraints.get(CONSTRAINT),
        "accuracy": record.accuracy,  # None when over budget: never trained, not "0 % accurate"
        "proxy_resolution": record.proxy_resolution,  # the input size the proxy scored the architecture at
        "proxy_seconds": record.proxy_seconds,
        "feasible": feasible,
        "duration_s": record.duration_s,
        "failure": record.failure,
        "node": record.node,  # the machine (Ray node) that evaluated the trial
        "hardware": record.hardware,  # the device it measured and trained on
        "duplicate_of": record.duplicate_of,
        "retry_of": record.retry_of,
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of an mvit-nas study (the content of ``trials.csv``), by trial number.

    Each config field becomes a ``config.<field>`` column (``config.layer3.num_heads``)
    next to the whole config as JSON; integer columns stay integers where values
    are missing (pandas nullable dtypes).

    Example:

    >>> frame = trials_frame(optuna.create_study(directions=["maximize", "minimize"]))
    >>> frame.empty, list(frame.columns[:3])
    (True, ['number', 'state', 'seed'])
    """
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    records = [TrialRecord.of(t) for t in trials]
    base = pd.DataFrame([_trial_row(t, r) for t, r in zip(trials, records, strict=True)], columns=_COLUMNS)
    configs = [r.config.to_dict() if r.config is not None else {} for r in records]
    knobs = pd.json_normalize(configs, sep=".").add_prefix("config.") if trials else pd.DataFrame()
    at = base.columns.get_loc("config") + 1
    frame = pd.concat([base.iloc[:, :at], knobs, base.iloc[:, at:], _rung_columns(study, base["number"])], axis=1)
    return frame.convert_dtypes()


def _rung_columns(study: optuna.Study, numbers: pd.Series) -> pd.DataFrame:
    """Successive halving's longer rungs: ``rung`` (the highest a trial has a score at; 0: the proxy's) and
    ``rung<k>_accuracy``, ``_epochs``, ``_seconds``, ``_failure`` per rung k >= 1; no column in a single-fidelity run.
    """
    results = read_rungs(study.user_attrs)
    if not results:
        return pd.DataFrame(index=numbers.index)
    scored = {trial.number for trial in study.get_trials(deepcopy=False) if trial.values is not None}
    cells: dict[str, list[Any]] = {"rung": []}
    for number in numbers:
        reached = [rung for (trial, rung), result in results.items() if trial == number and result.score is not None]
        cells["rung"].append(max(reached, default=0) if number in scored else None)
    for rung in sorted({rung for _, rung in results}):
        found = [results.get((number, rung)) for number in numbers]
        cells[f"rung{rung}_accuracy"] = [r.score if r else None for r in found]
        for name in ("epochs", "seconds", "failure"):
            cells[f"rung{rung}_{name}"] = [getattr(r, name) if r else None for r in found]
    return pd.DataFrame(cells, index=numbers.index)


def pareto_frame(
    table: pd.DataFrame, numbers: Sequence[int], config_files: Mapping[int, str | None], dominates: Mapping[int, str]
) -> pd.DataFrame:
    """The rows of ``table`` for the front ``numbers`` (in that order), with each one's config file and the
    seeds it dominates (``"xs;s"``) next to the trial number: the content of ``pareto.csv``."""
    pareto = table.set_index("number").loc[list(numbers)].reset_index()
    pareto.insert(1, "config_file", [config_files.get(n) for n in numbers])
    pareto.insert(2, "dominates_seeds", [dominates.get(n, "") for n in numbers])
    return pareto


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, missing cells as "—"; "(none)" for an empty frame."""
    if frame.empty:
        return "(none)"
    cells = frame.astype(object).where(frame.notna(), "—").astype(str)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False, name=None)]
    return "\n".join(lines)
