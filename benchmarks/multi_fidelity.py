"""Successive halving against the single-budget search, at equal wall time, on real images, scored by verification.

For each arm (:data:`ARMS`: ``single``, the default, every architecture gets the
proxy; ``halving``: successive halving, eta 3, its last rung the verification budget,
rung 0 the same proxy; ``halving-naswot``: the same, rung 0 naswot, which ranked as
well as the default proxy on real images at 1/160 of its cost, ``proxy_fidelity_real``)
and each seed: the whole
pipeline a user runs (:func:`mvit_nas.pipeline.run_search`: search on Ray with 2
workers, stopped after ``--minutes`` of wall time, then the final re-measurement
of the front) on the shared CIFAR-10 at the default 5 ms budget. The proxy trains
``--proxy-images`` images per architecture (the default proxy trains 3,200 on the
generated data). Then :func:`mvit_nas.verify.verify_run` trains every front point
and every budget-fitted seed for the verification budget (10x the proxy's images,
``--verify-seeds`` training seeds), and each run's front is scored by the
hypervolume of its *verified* points (accuracy, judged latency) up to (0, budget),
next to the verified fitted seeds' hypervolume and the verification's verdicts.
The latencies of that score are taken anew at the end, every verified model of
every run timed together against one calibration, from the configs the run records
keep, so a run's folder (in a temporary directory) need not outlive the machine.
Each run judged its trials against the quietest of its own calibrations, and two
runs' calibrations differed by 30%; the hypervolumes with each run's own latencies
are kept beside the re-timed ones.

Goal (issue 14): halving's mean verified hypervolume >= 1.1 x single's.

Resumable: each finished (arm, seed) is appended to
``results/benchmarks/multi_fidelity/runs.jsonl`` with the settings it ran under
(:data:`SETTINGS_KEYS`); a restarted benchmark skips the records of the same settings
and a run folder whose search finished (:data:`SEARCH_FILE`, the same settings) goes
straight on to its verification, which resumes job by job; a folder whose search was
cut is searched again from scratch, so that every arm's search has had exactly
``--minutes``. The summary is rewritten after every run, marked partial until every
(arm, seed) is done.

Run::

    nohup python -m benchmarks.multi_fidelity --dataset folder:../shared/datasets/cifar10 &
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, append_record, read_records, write_result
from mvit_nas.atomic import write_text
from mvit_nas.config import ArchConfig
from mvit_nas.fidelity import FidelitySpec
from mvit_nas.latency import Calibration, calibrate, quietest
from mvit_nas.pipeline import run_search
from mvit_nas.recheck import measure_together
from mvit_nas.report import hypervolume, rung_entries
from mvit_nas.report.verification import VerifiedModel
from mvit_nas.run import CALIBRATIONS_ATTR, TrialRecord, config_key, read_study
from mvit_nas.settings import RunOptions, SearchSettings
from mvit_nas.verify import verify_run

NAME = "multi_fidelity"
STATE_DIR = RESULTS_DIR / NAME
RUNS_FILE = STATE_DIR / "runs.jsonl"
GOAL_RATIO = 1.1
TRAIN_IMAGES = 45_000  # CIFAR-10's train split less the held-out 10%
# arm -> (fidelity, rung 0's proxy); the training rungs of halving train whatever rung 0 is
ARMS = {"single": ("single", "train"), "halving": ("halving", "train"), "halving-naswot": ("halving", "naswot")}
DEFAULT_ARMS = ("single", "halving-naswot")
SETTINGS_KEYS = ("minutes", "proxy_images", "dataset", "budget_ms", "verify_seeds", "workers")
SEARCH_FILE = "benchmark_search.json"  # in a run folder: its search finished, in this wall time, under these settings


def _settings(arm: str, seed: int, args: argparse.Namespace) -> SearchSettings:
    fidelity, proxy = ARMS[arm]
    return SearchSettings.create(
        args.budget_ms,
        proxy=proxy,
        epochs=args.proxy_images / TRAIN_IMAGES,
        dataset=args.dataset,
        seed=seed,
        fidelity=FidelitySpec(fidelity),
    )


def _recorded_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a run record keeps: a record is reused only under the same ones."""
    return {key: getattr(args, key) for key in SETTINGS_KEYS}


def _same_settings(record: dict[str, Any], args: argparse.Namespace) -> bool:
    return all(record.get(key) == value for key, value in _recorded_settings(args).items())


def _searched(run_dir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The finished search of ``run_dir`` under the same settings (its wall time and trials); None if there is none."""
    path = run_dir / SEARCH_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not _same_settings(record, args):
        return None
    return {"search_seconds": record["search_seconds"], "finished_trials": record["finished_trials"]}


def _point(model: VerifiedModel, rung: int, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "trial": model.trial,
        "latency_ms": model.latency_ms,
        "search_score": model.proxy_score,
        "rung": rung,
        "verified": model.accuracy,
        "verified_each": list(model.accuracies),
        "config": config,  # so that the run's points can be timed again once its folder is gone
    }


def _score(run_dir: Path, budget_ms: float, verify_seeds: int, workers: int) -> dict[str, Any]:
    """Verify the run's front and fitted seeds; the hypervolumes of both, verified, and the verdicts."""
    report = verify_run(run_dir, seeds=verify_seeds, workers=workers)
    front = [m for m in report.models if m.on_front and m.accuracies]
    seeds = [m for m in report.models if m.is_seed and m.accuracies]
    reference = (0.0, budget_ms)
    study = read_study(run_dir)
    tops = {entry.trial: entry.top for entry in rung_entries(study)}
    trials = study.get_trials(deepcopy=False)

    def config(model: VerifiedModel) -> dict[str, Any]:
        return TrialRecord.of(trials[model.trial]).config.to_dict()

    return {
        "verify_epochs": report.epochs,
        "front": [_point(m, tops.get(m.trial, 0), config(m)) for m in front],
        "fitted_seeds": [
            {"seed": m.role, "latency_ms": m.latency_ms, "verified": m.accuracy, "config": config(m)} for m in seeds
        ],
        "hypervolume_verified_front": hypervolume([(m.accuracy, m.latency_ms) for m in front], reference),
        "hypervolume_verified_seeds": hypervolume([(m.accuracy, m.latency_ms) for m in seeds], reference),
        "verdicts": [{"trial": c.trial, "seed": c.seed, "verdict": c.verdict} for c in report.comparisons],
        "kendall_tau_search_vs_verified": report.kendall_tau,
    }


def _run(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = args.workdir / f"{arm}-seed{seed}"
    search = _searched(run_dir, args)
    if search is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # a search cut short starts again: each arm gets --minutes
        options = RunOptions(trials=10_000, timeout=60 * args.minutes, workers=args.workers)
        started = time.monotonic()
        result = run_search(_settings(arm, seed, args), run_dir, options)
        search = {"search_seconds": time.monotonic() - started, "finished_trials": result.outcome.finished}
        write_text(run_dir / SEARCH_FILE, json.dumps({**_recorded_settings(args), **search}))
    study = read_study(run_dir)
    rungs: dict[int, int] = {}
    for entry in rung_entries(study):
        for rung in entry.scores:
            rungs[rung] = rungs.get(rung, 0) + 1
    # What the run judged its latencies against, on its last start's hardware: a slower machine makes the same
    # budget tighter for its arm.
    calibrations = [Calibration.from_dict(c) for c in study.user_attrs.get(CALIBRATIONS_ATTR, [])]
    last = calibrations[-1] if calibrations else None
    judged_against = quietest(calibrations, last.spec, last.hardware) if last else None
    started = time.monotonic()
    scored = _score(run_dir, args.budget_ms, args.verify_seeds, args.workers)
    return {
        "arm": arm,
        "seed": seed,
        **_recorded_settings(args),
        **search,
        "judged_against_ms": judged_against.reference_ms if judged_against else None,
        "hardware": judged_against.hardware if judged_against else None,
        "architectures_per_rung": {str(k): v for k, v in sorted(rungs.items())},
        "verify_seconds": time.monotonic() - started,
        **scored,
    }


def _remeasure(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]] | None:
    """Every verified model of every run timed again in one interleaved measurement, against one calibration.

    Each run judged its latencies against its own start's calibration; two runs' calibrations
    differed by 30% here, which moves whole fronts along the latency axis. Timed together,
    the arms' fronts and seeds compare on one footing. Per run (``arm-seedN``): the
    verified points with their common latency, and the hypervolumes from them. The configs
    come from the run records, so no run folder is needed; None when a record predates
    them (its points cannot be timed again, and a comparison of only some runs is no headline).
    """
    points = [p for run in runs for p in run["front"] + run["fitted_seeds"]]
    if not points or any("config" not in p for p in points):
        return None
    models = {config_key(c): c for c in (ArchConfig.from_dict(p["config"]) for p in points)}
    spec = _settings("single", 0, args).latency  # every arm and seed times under the same spec
    latencies = dict(zip(models, measure_together(list(models.values()), spec, calibrate(spec)), strict=True))

    def timed(point: dict[str, Any]) -> tuple[float, float]:
        return point["verified"], latencies[config_key(ArchConfig.from_dict(point["config"]))].judged_ms

    reference = (0.0, args.budget_ms)
    result = {}
    for run in runs:
        front = [timed(p) for p in run["front"]]
        seeds = [timed(p) for p in run["fitted_seeds"]]
        result[f"{run['arm']}-seed{run['seed']}"] = {
            "front": [{"verified": a, "latency_ms": ms} for a, ms in front],
            "fitted_seeds": [{"verified": a, "latency_ms": ms} for a, ms in seeds],
            "hypervolume_verified_front": hypervolume(front, reference),
            "hypervolume_verified_seeds": hypervolume(seeds, reference),
        }
    return result


def _summarise(
    runs: list[dict[str, Any]], planned: int, args: argparse.Namespace, remeasured: dict[str, dict[str, Any]] | None
) -> dict[str, Any]:
    by_arm = {arm: [r for r in runs if r["arm"] == arm] for arm in args.arms}

    def mean_hypervolume(source: dict[str, Any] | None) -> dict[str, float | None]:
        def hv(run: dict[str, Any]) -> float:
            scored = run if source is None else source[f"{run['arm']}-seed{run['seed']}"]
            return scored["hypervolume_verified_front"]

        return {arm: statistics.fmean(hv(r) for r in rs) if rs else None for arm, rs in by_arm.items()}

    def over_single(hv: dict[str, float | None]) -> dict[str, float | None]:
        single = hv.get("single")
        return {
            arm: value / single if value is not None and single else None
            for arm, value in hv.items()
            if arm != "single"
        }

    as_searched = mean_hypervolume(None)
    together = mean_hypervolume(remeasured) if remeasured else None
    partial = len(runs) < planned
    if together:
        latencies = "re-measured together"
    elif partial:
        latencies = "as each run judged them (all are re-measured together once every run is done)"
    else:
        latencies = "as each run judged them (a run recorded without its configs cannot be timed again)"
    mean_hv = together or as_searched
    ratios = over_single(mean_hv)
    best = max((arm for arm in ratios if ratios[arm] is not None), key=lambda arm: ratios[arm], default=None)

    def beats_seeds(run: dict[str, Any]) -> bool:  # on the same latencies as the headline
        scored = remeasured[f"{run['arm']}-seed{run['seed']}"] if remeasured else run
        return scored["hypervolume_verified_front"] > scored["hypervolume_verified_seeds"]

    beats = {arm: [beats_seeds(r) for r in rs] for arm, rs in by_arm.items()}
    return {
        "goal": f"halving's mean verified hypervolume >= {GOAL_RATIO} x single's, at equal wall time",
        "passed": (not partial) and best is not None and ratios[best] >= GOAL_RATIO,
        "partial": partial,
        "runs_done": len(runs),
        "runs_planned": planned,
        **_recorded_settings(args),
        "arms": {arm: dict(zip(("fidelity", "rung0_proxy"), ARMS[arm], strict=True)) for arm in args.arms},
        "summary": {
            "latencies": latencies,
            "mean_hypervolume_verified_front": mean_hv,
            "hypervolume_ratio_over_single": ratios,
            "best_halving_arm": best,
            "mean_hypervolume_verified_front_as_searched": as_searched,
            "hypervolume_ratio_over_single_as_searched": over_single(as_searched),
            "front_beats_fitted_seeds_hypervolume": beats,
            # Each run's quickest reference (ms): runs far apart searched under budgets in effect unequal.
            "judged_against_quickest_ms": {
                f"{r['arm']}-seed{r['seed']}": min(r["judged_against_ms"].values())
                if r.get("judged_against_ms")
                else None
                for r in runs
            },
        },
        "runs": runs,
        "remeasured_together": remeasured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="folder:../shared/datasets/cifar10")
    parser.add_argument("--budget-ms", type=float, default=5.0)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall time of each search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--proxy-images", type=int, default=3_200)
    parser.add_argument("--verify-seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / f"mvit-nas-{NAME}")
    args = parser.parse_args()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    runs = [r for r in read_records(RUNS_FILE) if r["arm"] in args.arms and _same_settings(r, args)]
    plan = [(arm, seed) for seed in args.seeds for arm in args.arms]  # interleaved: a stopped run leaves both arms
    for arm, seed in plan:
        if any(r["arm"] == arm and r["seed"] == seed for r in runs):
            continue
        print(f"{arm} seed {seed}: searching {args.minutes:g} min", flush=True)
        run = _run(arm, seed, args)
        append_record(RUNS_FILE, run)
        runs.append(run)
        print(f"{arm} seed {seed}: verified hypervolume {run['hypervolume_verified_front']:.4f}", flush=True)
        write_result(NAME, _summarise(runs, len(plan), args, None))
    print(write_result(NAME, _summarise(runs, len(plan), args, _remeasure(runs, args))))


if __name__ == "__main__":
    main()
