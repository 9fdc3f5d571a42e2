"""Proxy fidelity: does the default short-training proxy rank architectures like a much longer training does?

Configs: xxs, xs, s and random points of the default space stratified by FLOPs
(a fixed seed; the random config nearest each FLOPs quantile of a large random
sample). Each is trained with the default proxy budget (``ProxySpec()``) and
with ``--factor`` times its epochs (everything else equal), on the default
synthetic dataset, and scored by the three zero-cost proxies. Kendall's tau
(``scipy.stats.kendalltau``) against the long-budget accuracy is reported for
short training, synflow, naswot, grad_norm, params and FLOPs. Goal: short
training tau >= 0.6 and above every params / FLOPs baseline.

FLOPs are given twice: at each config's own resolution (what the search sees)
and at the proxy's input size for it (what the trained network computes: the
proxy trains each config at ``ProxySpec.input_size`` of its resolution, half of
it by default). The goal is checked against both. The data is loaded exactly as
a search loads it (:meth:`~mvit_nas.settings.SearchSettings.load_data`).

The trainings run in ``--workers`` processes with one thread each (as a search
trial does), longest first so that the two cores stay busy to the end. Each
finished evaluation is appended to ``results/benchmarks/NAME/jobs.jsonl``
(fsynced): a stopped run, started again with the same options, runs only what
is missing (a record counts for a job only if its config and budget are the
job's, so other options start afresh).

Run::

    python -m benchmarks.proxy_fidelity           # 10 configs, short + 8x: ~1.5-2 h on 2 cores
    python -m benchmarks.proxy_fidelity --quick   # 5 configs, short + 2x: a smoke test, marked quick
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks._common import RESULTS_DIR, append_record, read_records, write_result
from mvit_nas.config import PRESETS, ArchConfig, preset
from mvit_nas.cost import count_cost
from mvit_nas.data import ProxyData
from mvit_nas.proxy import ProxySpec, TrialFailed, evaluate_proxy
from mvit_nas.settings import SearchSettings
from mvit_nas.space import load_space

GOAL_TAU = 0.6
ZERO_COST = ("synflow", "naswot", "grad_norm")
SAMPLE_SIZE = 3000  # random configs to stratify over; count_cost takes ~0.1 ms each
SEED = 0
DEFAULTS = SearchSettings(budget_ms=1.0)  # a search's defaults: its dataset, loaded its way

_DATA: ProxyData | None = None  # one copy of the dataset per worker process


@dataclasses.dataclass(frozen=True)
class Job:
    """One proxy evaluation of one config; ``cost`` orders the queue (largest first)."""

    name: str
    what: str  # "short", "long" or a zero-cost kind
    config: dict[str, Any]
    spec: dict[str, Any]
    cost: float

    def matches(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is this job's result: same config, same proxy, same budget."""
        return (record.get("name"), record.get("what"), record.get("config"), record.get("spec")) == (
            self.name,
            self.what,
            self.config,
            self.spec,
        )


def proxy_flops(cfg: ArchConfig, spec: ProxySpec) -> float:
    """FLOPs of ``cfg`` at the input size ``spec`` trains it at: what the proxy's network computes."""
    return count_cost(cfg, spec.input_size(cfg.resolution)).flops


def pick_configs(count: int, short: ProxySpec, seed: int = SEED) -> list[tuple[str, ArchConfig]]:
    """xxs/xs/s plus ``count - 3`` random configs of the default space at evenly spaced FLOPs quantiles.

    Stratifying by FLOPs at the proxy's input size spreads the picks over the
    capacity range the proxy actually sees, from the smallest to the largest models.
    """
    space = load_space()
    named = [(name, preset(name)) for name in PRESETS]
    rng = random.Random(seed)
    pool = [
        space.decode({knob: rng.choice(values) for knob, values in space.searched_knobs.items()})
        for _ in range(SAMPLE_SIZE)
    ]
    flops = np.array([proxy_flops(cfg, short) for cfg in pool], dtype=float)
    strata = count - len(named)
    targets = np.quantile(flops, (np.arange(strata) + 0.5) / strata)
    taken: set[int] = set()
    for index, target in enumerate(targets):
        order = np.argsort(np.abs(flops - target))
        pick = next(int(i) for i in order if int(i) not in taken)
        taken.add(pick)
        named.append((f"q{index:02d}", pool[pick]))
    return named


def _init_worker(cache_dir: str) -> None:
    global _DATA
    _DATA = DEFAULTS.load_data(Path(cache_dir))


def _run(job: Job) -> dict[str, Any]:
    assert _DATA is not None
    spec = ProxySpec.from_dict(job.spec)
    started = time.perf_counter()
    record = {"name": job.name, "what": job.what, "config": job.config, "spec": job.spec}
    try:
        result = evaluate_proxy(ArchConfig.from_dict(job.config), spec, _DATA)
    except TrialFailed as error:
        return {**record, "score": None, "failure": error.reason}
    return {**record, "score": result.score, "seconds": time.perf_counter() - started}


def make_jobs(
    configs: list[tuple[str, ArchConfig]],
    short: ProxySpec,
    long: ProxySpec,
    alternatives: dict[str, ProxySpec] | None = None,
) -> list[Job]:
    jobs = []
    trainings = {"short": short, "long": long, **(alternatives or {})}
    for name, cfg in configs:
        # Training time grows with the steps and (roughly) with the FLOPs at the training resolution.
        flops = proxy_flops(cfg, short)
        for what, spec in trainings.items():
            jobs.append(Job(name, what, cfg.to_dict(), spec.to_dict(), spec.epochs * flops))
        for kind in ZERO_COST:
            jobs.append(Job(name, kind, cfg.to_dict(), dataclasses.replace(short, kind=kind).to_dict(), 0.0))
    return sorted(jobs, key=lambda job: -job.cost)


def run_jobs(jobs: list[Job], workers: int, records_file: Path) -> list[dict[str, Any]]:
    """Every job's result: those ``records_file`` holds, and the rest run now and appended to it."""
    held = read_records(records_file)
    found = [(job, next((r for r in held if job.matches(r)), None)) for job in jobs]
    results = [record for _, record in found if record is not None]
    todo = [job for job, record in found if record is None]
    print(f"{len(results)}/{len(jobs)} evaluations done before; {len(todo)} to run", flush=True)
    if not todo:
        return results
    with tempfile.TemporaryDirectory(prefix="proxy-fidelity-") as cache_dir:
        # Generate the dataset once here, as a search does; the workers read the cached file.
        DEFAULTS.load_data(Path(cache_dir))
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(cache_dir,)
        ) as pool:
            futures = [pool.submit(_run, job) for job in todo]
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                append_record(records_file, result)
                results.append(result)
                seconds = result.get("seconds")
                shown = f"{seconds:7.1f} s" if seconds is not None else result.get("failure", "")
                print(f"[{len(results):3d}/{len(jobs)}] {result['name']:4s} {result['what']:9s} {shown}", flush=True)
    return results


def parse_alternative(text: str, short: ProxySpec) -> tuple[str, ProxySpec]:
    """``"batch_size=16,lr=0.002"`` -> (its column name, the short budget with those fields changed)."""
    changes: dict[str, Any] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        current = getattr(short, key.strip())  # AttributeError names an unknown field
        changes[key.strip()] = type(current)(value)
    return f"short[{text}]", dataclasses.replace(short, **changes)


def kendall(table: pd.DataFrame, target: str, columns: list[str]) -> dict[str, dict[str, float | None]]:
    """Kendall's tau-b of each column against ``target`` over the rows where both are known."""
    out: dict[str, dict[str, float | None]] = {}
    for column in columns:
        both = table[[column, target]].dropna()
        if len(both) < 3:
            out[column] = {"tau": None, "p_value": None, "n": len(both)}
            continue
        result = stats.kendalltau(both[column], both[target])
        tau = None if np.isnan(result.statistic) else round(float(result.statistic), 4)
        p_value = None if np.isnan(result.pvalue) else round(float(result.pvalue), 5)
        out[column] = {"tau": tau, "p_value": p_value, "n": len(both)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 configs, long budget 2x (a smoke test)")
    parser.add_argument("--configs", type=int, help="configs including xxs/xs/s (default 10; quick 5)")
    parser.add_argument("--factor", type=float, help="long budget / default budget, in epochs (default 8; quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where proxies train")
    parser.add_argument("--lr", type=float, help=f"peak learning rate of both budgets (default {ProxySpec.lr:g})")
    parser.add_argument("--epochs", type=float, help=f"short budget in epochs (default {ProxySpec.epochs:g})")
    parser.add_argument("--batch-size", type=int, help=f"batch size of both budgets (default {ProxySpec.batch_size})")
    parser.add_argument(
        "--alternative",
        action="append",
        default=[],
        help="another short recipe to rank alongside, e.g. batch_size=16 (ProxySpec fields; repeatable)",
    )
    parser.add_argument("--name", default="proxy_fidelity", help="result file name, for variants of the recipe")
    args = parser.parse_args()
    count = args.configs or (5 if args.quick else 10)
    factor = args.factor or (2.0 if args.quick else 8.0)
    if count < 4:
        parser.error("--configs must be at least 4 (xxs, xs, s and one random config)")

    short = ProxySpec(device=args.device)  # the default proxy, exactly as a search uses it
    for field_name, value in (("lr", args.lr), ("epochs", args.epochs), ("batch_size", args.batch_size)):
        if value is not None:  # a variant of the recipe, to find what moves the fidelity
            short = dataclasses.replace(short, **{field_name: value})
    long = dataclasses.replace(short, epochs=short.epochs * factor)
    dataset = DEFAULTS.dataset
    configs = pick_configs(count, short)
    alternatives = dict(parse_alternative(text, short) for text in args.alternative)
    jobs = make_jobs(configs, short, long, alternatives)
    load_before, started = os.getloadavg(), time.perf_counter()
    results = run_jobs(jobs, args.workers, RESULTS_DIR / args.name / "jobs.jsonl")
    elapsed = time.perf_counter() - started

    rows = []
    for name, cfg in configs:
        mine = {r["what"]: r for r in results if r["name"] == name}
        row: dict[str, Any] = {
            "name": name,
            "params": count_cost(cfg).params,
            "flops": count_cost(cfg).flops,
            "flops_at_proxy_resolution": proxy_flops(cfg, short),
            "resolution": cfg.resolution,
            "proxy_resolution": short.input_size(cfg.resolution),
            "long_accuracy": mine["long"]["score"],
            "short_training": mine["short"]["score"],
            **{what: mine[what]["score"] for what in alternatives},
            **{kind: mine[kind]["score"] for kind in ZERO_COST},
            "short_seconds": mine["short"].get("seconds"),
            "long_seconds": mine["long"].get("seconds"),
            "zero_cost_seconds": {kind: mine[kind].get("seconds") for kind in ZERO_COST},
            "failures": {what: r["failure"] for what, r in mine.items() if r.get("failure")},
            "config": cfg.to_dict(),
        }
        rows.append(row)
    table = pd.DataFrame(rows).set_index("name")
    shown = ["flops_at_proxy_resolution", "short_training", *alternatives, "long_accuracy", *ZERO_COST, "long_seconds"]
    print(table[shown].to_string())

    metrics = ["short_training", *alternatives, *ZERO_COST, "params", "flops", "flops_at_proxy_resolution"]
    taus = kendall(table, "long_accuracy", metrics)
    short_tau = taus["short_training"]["tau"]
    baselines = [taus[name]["tau"] for name in ("params", "flops", "flops_at_proxy_resolution")]
    best_baseline = max((tau for tau in baselines if tau is not None), default=None)
    passed = short_tau is not None and short_tau >= GOAL_TAU and (best_baseline is None or short_tau > best_baseline)
    for name, value in taus.items():
        print(f"tau {name:26s} {value['tau']}")
    payload = {
        "goal": f"Kendall tau(short training, {factor:g}x-budget accuracy) >= {GOAL_TAU} and above params and FLOPs",
        "passed": passed,
        "quick": args.quick,
        "summary": {
            "short_training_tau": short_tau,
            "best_baseline_tau": best_baseline,
            "best_zero_cost": max(ZERO_COST, key=lambda kind: taus[kind]["tau"] or -2.0),
            "configs": count,
        },
        "kendall_tau": taus,
        "short_budget": short.to_dict(),
        "alternative_short_budgets": {what: spec.to_dict() for what, spec in alternatives.items()},
        "long_budget": long.to_dict(),
        "factor": factor,
        "dataset": dataset,
        "selection": f"xxs/xs/s + {count - 3} random configs of the default space nearest evenly spaced quantiles "
        f"of FLOPs at the proxy's input size ({short.input_text()}) over {SAMPLE_SIZE} random configs (seed {SEED})",
        "device": args.device,
        "workers": args.workers,
        "threads_per_worker": short.threads,
        "duration_s": round(elapsed, 1),  # this invocation's; a resumed run's earlier part is in evaluation_s
        "evaluation_s": round(sum(r.get("seconds") or 0.0 for r in results), 1),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "rows": rows,
    }
    print(f"passed: {passed}  ->  {write_result(args.name, payload)}")


if __name__ == "__main__":
    main()
