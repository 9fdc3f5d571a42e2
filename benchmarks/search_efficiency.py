"""Search efficiency: which Optuna sampler finds the best accuracy-latency front for a given number of trials?

Every candidate sampler (``settings.SAMPLERS``: tpe, nsga2, random; plus TPE
without ``multivariate``) runs the same number of trials with 3 seeds on a
cheap but real objective, set up like the real search:

- maximise a zero-cost proxy (``--proxy``, naswot by default) scored at the
  proxy's resolution on the default synthetic dataset, min-max normalised over a
  fixed random reference sample of the space (0 = the worst reference config);
- minimise predicted latency: ``mvit_nas.predictor``'s table for the default
  spec when one has been built (``benchmarks/latency_predictor.py`` saves it
  under ``results/latency_tables/``; run that first), otherwise a stand-in, a
  least-squares line latency = a + b * FLOPs fitted to ONNX Runtime latencies
  measured here on xxs/xs/s and 5 random configs; the JSON says which was used;
- under a latency budget passed as ``Trial.set_constraint`` (default: the
  predicted latency of xxs, i.e. "find models at least as fast as xxs"); as in
  the real search, an over-budget trial is not scored and gets accuracy 0;
- xxs, xs and s enqueued as the first three trials.

The score of an architecture does not depend on the config's resolution (the
proxy runs at its own resolution), so it is cached per architecture, across
resolutions. Figure of merit: Optuna's hypervolume (``mvit_nas.report``) of the
feasible front against the fixed reference point (0, budget). Goal: the default
sampler's mean hypervolume >= 1.2x random's. The winner is reported so that it
can be made the default.

Run::

    python -m benchmarks.search_efficiency           # 4 samplers x 3 seeds x 60 trials: ~10 min on 2 cores
    python -m benchmarks.search_efficiency --quick   # 20 trials, 2 seeds, marked quick
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import pickle
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from scipy import stats

from benchmarks._common import write_result
from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.cost import count_cost
from mvit_nas.data import ProxyData, load_dataset, parse_dataset_spec
from mvit_nas.latency import LatencySpec, measure_config
from mvit_nas.proxy import ProxySpec, TrialFailed, evaluate_proxy
from mvit_nas.report import front, hypervolume
from mvit_nas.run import CONSTRAINT, TrialRecord, config_key, is_feasible
from mvit_nas.settings import SAMPLERS, SearchSettings
from mvit_nas.space import load_space

GOAL_RATIO = 1.2
REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SEED = 1234  # the reference sample must not depend on any sampler seed
CALIBRATION_RANDOM = 5


def _tpe_univariate(seed: int) -> optuna.samplers.BaseSampler:
    # search._tpe with multivariate off; n_startup_trials kept equal so only that one setting differs.
    return optuna.samplers.TPESampler(seed=seed, multivariate=False, n_startup_trials=10)


CANDIDATES: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {**SAMPLERS, "tpe-univariate": _tpe_univariate}


# --- latency: the predictor, or a documented stand-in ---------------------------------------


@dataclass(frozen=True)
class LinearLatency:
    """Stand-in latency predictor: ``intercept + slope * FLOPs`` (ms), FLOPs at the config's resolution."""

    intercept: float
    slope: float

    def __call__(self, cfg: ArchConfig) -> float:
        return self.intercept + self.slope * count_cost(cfg).flops


@dataclass(frozen=True)
class TablePredictor:
    """``mvit_nas.predictor.LatencyTable`` behind the same call interface as the stand-in."""

    table: Any

    def __call__(self, cfg: ArchConfig) -> float:
        return float(self.table.predict(cfg))


def _table_predictor(spec: LatencySpec) -> tuple[TablePredictor | None, str]:
    """The real predictor if its table for ``spec`` exists (else None and why not).

    ``benchmarks/latency_predictor.py`` (or ``mvit-nas latency-table build``) saves that table; building
    one here would add ~10 minutes, so without it the documented stand-in is used instead.
    """
    try:
        from mvit_nas.predictor import default_table_path, load_table
    except ImportError as error:
        return None, f"mvit_nas.predictor is not importable ({error})"
    path = REPO_ROOT / default_table_path(spec)  # the default path is relative to the repository root
    try:
        model = TablePredictor(load_table(spec, path))
        model(preset("xxs"))
        pickle.dumps(model)  # it is sent to the worker processes
    except Exception as error:  # a missing, stale or unreadable table: fall back to the stand-in
        return None, f"no usable latency table at {path}: {type(error).__name__}: {error}"
    return model, f"mvit_nas.predictor.load_table: {path}"


def latency_model(spec: LatencySpec, quick: bool) -> tuple[Callable[[ArchConfig], float], dict[str, Any]]:
    model, reason = _table_predictor(spec)
    if model is not None:
        return model, {"kind": "predictor", "source": reason, "spec": spec.to_dict()}
    space = load_space()
    rng = random.Random(REFERENCE_SEED)
    configs = [(name, preset(name)) for name in PRESETS]
    for index in range(2 if quick else CALIBRATION_RANDOM):
        params = {knob: rng.choice(values) for knob, values in space.searched_knobs.items()}
        configs.append((f"random{index}", space.decode(params)))
    points = []
    for name, cfg in configs:
        measured = measure_config(cfg, dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution))
        points.append({"name": name, "flops": count_cost(cfg).flops, "measured_ms": measured.median_ms})
        mflops = points[-1]["flops"] / 1e6
        print(f"calibration {name:8s} {cfg.resolution}px {mflops:8.1f} MFLOPs {measured.median_ms:7.2f} ms")
    frame = pd.DataFrame(points)
    fit = stats.linregress(frame["flops"], frame["measured_ms"])
    line = LinearLatency(float(fit.intercept), float(fit.slope))
    info = {
        "kind": "stand-in: linear in FLOPs, fitted to measured latency",
        "why": reason,
        "formula": "latency_ms = intercept + slope * flops (closed-form FLOPs at the config's resolution)",
        "intercept_ms": line.intercept,
        "slope_ms_per_gflop": line.slope * 1e9,
        "r_squared": float(fit.rvalue**2),
        "calibration": points,
        "spec": spec.to_dict(),
    }
    return line, info


# --- one study (runs in a worker process) ------------------------------------------------------

_DATA: ProxyData | None = None
_SCORES: dict[str, float | None] = {}  # architecture -> raw zero-cost score, per worker process


def _init_worker(dataset: str, resolution: int, cache_dir: str) -> None:
    global _DATA
    _DATA = load_dataset(parse_dataset_spec(dataset), resolution, cache_dir=Path(cache_dir))


def raw_score(cfg: ArchConfig, proxy: ProxySpec) -> float | None:
    """The zero-cost score of ``cfg``'s architecture (None if it cannot be scored), cached."""
    assert _DATA is not None
    # The proxy ignores the config's resolution (it runs at its own), so one score serves every resolution.
    key = config_key(dataclasses.replace(cfg, resolution=proxy.resolution))
    if key not in _SCORES:
        try:
            _SCORES[key] = evaluate_proxy(cfg, proxy, _DATA).score
        except TrialFailed:
            _SCORES[key] = None
    return _SCORES[key]


def reference_scores(configs: list[dict[str, Any]], proxy: dict[str, Any]) -> list[float | None]:
    spec = ProxySpec.from_dict(proxy)
    return [raw_score(ArchConfig.from_dict(cfg), spec) for cfg in configs]


@dataclass(frozen=True)
class StudyJob:
    sampler: str
    seed: int
    trials: int
    budget_ms: float
    proxy: dict[str, Any]
    score_range: tuple[float, float]
    latency: Callable[[ArchConfig], float]


def run_study(job: StudyJob) -> dict[str, Any]:
    started = time.perf_counter()
    spec = ProxySpec.from_dict(job.proxy)
    space = load_space()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=CANDIDATES[job.sampler](job.seed))
    for name in PRESETS:  # the seeds come first, as in the real search
        study.enqueue_trial(space.params_of(preset(name)), user_attrs=TrialRecord(seed=name).user_attrs())
    low, high = job.score_range
    evaluated = 0
    for _ in range(job.trials):
        trial = study.ask()
        cfg = space.sample(trial)
        latency = job.latency(cfg)
        TrialRecord(config_key=config_key(cfg)).write(trial)
        trial.set_constraint(CONSTRAINT, latency - job.budget_ms)
        if latency > job.budget_ms:
            study.tell(trial, [0.0, latency])  # never scored, like an over-budget trial of the search
            continue
        evaluated += 1
        score = raw_score(cfg, spec)
        if score is None:
            study.tell(trial, state=TrialState.FAIL)
            continue
        study.tell(trial, [(score - low) / (high - low), latency])
    points = [trial.values for trial in front(study)]
    return {
        "sampler": job.sampler,
        "seed": job.seed,
        "hypervolume": hypervolume(points, reference=(0.0, job.budget_ms)),
        "front_size": len(points),
        "feasible_trials": sum(1 for t in study.trials if t.state == TrialState.COMPLETE and is_feasible(t)),
        "scored_trials": evaluated,
        "best_score": max((p[0] for p in points), default=None),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 trials, 2 seeds, small reference sample")
    parser.add_argument("--trials", type=int, help="trials per study, seeds included (default 60; quick 20)")
    parser.add_argument("--seeds", type=int, help="seeds per sampler (default 3; quick 2)")
    parser.add_argument("--proxy", default="naswot", choices=("synflow", "naswot", "grad_norm"))
    parser.add_argument("--budget-ms", type=float, help="latency budget (default: the predicted latency of xxs)")
    parser.add_argument("--workers", type=int, default=2, help="processes running studies, one thread each")
    args = parser.parse_args()
    trials = args.trials or (20 if args.quick else 60)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    reference_size = 16 if args.quick else 60

    defaults = SearchSettings(budget_ms=1.0)  # only its defaults are used
    proxy = dataclasses.replace(defaults.proxy, kind=args.proxy, threads=1)
    load_before, started = os.getloadavg(), time.perf_counter()
    predict, latency_info = latency_model(defaults.latency, args.quick)
    budget_ms = args.budget_ms if args.budget_ms is not None else predict(preset("xxs"))
    print(f"budget {budget_ms:.2f} ms ({'given' if args.budget_ms else 'predicted latency of xxs'})")

    space = load_space()
    rng = random.Random(REFERENCE_SEED)
    reference = [
        space.decode({knob: rng.choice(values) for knob, values in space.searched_knobs.items()}).to_dict()
        for _ in range(reference_size)
    ]
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as cache_dir:
        load_dataset(parse_dataset_spec(defaults.dataset), proxy.resolution, cache_dir=Path(cache_dir))
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            args.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(defaults.dataset, proxy.resolution, cache_dir),
        ) as pool:
            halves = [reference[i :: args.workers] for i in range(args.workers)]
            scores = [s for part in pool.map(reference_scores, halves, [proxy.to_dict()] * len(halves)) for s in part]
            known = pd.Series([s for s in scores if s is not None], dtype=float)
            score_range = (float(known.min()), float(known.max()))
            print(f"{args.proxy} over {len(known)} reference configs: {score_range[0]:.4g} .. {score_range[1]:.4g}")
            jobs = [
                StudyJob(name, seed, trials, budget_ms, proxy.to_dict(), score_range, predict)
                for seed in seeds
                for name in CANDIDATES
            ]
            runs = []
            for future in concurrent.futures.as_completed([pool.submit(run_study, job) for job in jobs]):
                runs.append(future.result())
                run = runs[-1]
                print(
                    f"{run['sampler']:15s} seed {run['seed']}  hypervolume {run['hypervolume']:.4f}  "
                    f"front {run['front_size']:2d}  feasible {run['feasible_trials']:2d}/{trials}  {run['seconds']} s",
                    flush=True,
                )
    elapsed = time.perf_counter() - started

    table = pd.DataFrame(runs)
    summary = table.groupby("sampler")["hypervolume"].agg(["mean", "std", "min", "max", "count"])
    summary["vs_random"] = summary["mean"] / summary.loc["random", "mean"]
    summary = summary.sort_values("mean", ascending=False)
    print(summary)
    default = defaults.sampler
    ratio = float(summary.loc[default, "vs_random"])
    winner = str(summary.index[0])
    payload = {
        "goal": f"default sampler ({default}) mean hypervolume >= {GOAL_RATIO}x random's",
        "passed": ratio >= GOAL_RATIO,
        "quick": args.quick,
        "summary": {"default_sampler": default, "default_vs_random": round(ratio, 3), "winner": winner},
        "per_sampler": {
            name: {key: (None if pd.isna(value) else round(float(value), 5)) for key, value in row.items()}
            for name, row in summary.iterrows()
        },
        "objective": {
            "accuracy": f"{args.proxy} zero-cost score at {proxy.resolution}px, min-max normalised over "
            f"{len(known)} random reference configs (seed {REFERENCE_SEED}); over-budget trials get 0",
            "score_range": score_range,
            "proxy": proxy.to_dict(),
            "latency": latency_info,
            "budget_ms": budget_ms,
            "reference_point": [0.0, budget_ms],
            "hypervolume_unit": "normalised score x ms",
        },
        "trials_per_study": trials,
        "seeds": seeds,
        "samplers": list(CANDIDATES),
        "duration_s": round(elapsed, 1),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "runs": sorted(runs, key=lambda run: (run["sampler"], run["seed"])),
    }
    print(
        f"winner: {winner}; default {default} = {ratio:.2f}x random  ->  {write_result('search_efficiency', payload)}"
    )


if __name__ == "__main__":
    main()
