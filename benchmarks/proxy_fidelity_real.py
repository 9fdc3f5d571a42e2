"""Proxy fidelity on real images: which cheap score orders architectures of one budget as real training does?

Architectures: ``--archs`` (default 20) drawn from the region the default search
explores (the default space, feasible under the default 5 ms budget as measured
here, spread over resolution and latency), plus the budget-fitted seeds.

Ground truth: training on the shared CIFAR-10 (``--dataset``) for ``--truth-factor``
(default 10) times the default proxy's budget in images (the default proxy trains
0.25 epochs of the default 12,800-image generated dataset: 3,200 images), at the
proxy's input size (``--truth-scale`` x the architecture's resolution), top-1 on
the held-out validation split (5,000 train images; the test batch is never
used), with four independent seeds (:data:`TRUTH_SEEDS`), the truth their mean.
Its **ceiling** is Kendall's tau between two independent halves of them (the mean
of seeds 0 and 1 against that of 2 and 3; every other halving is kept beside it,
``ceiling_every_split``): a truth below 0.7 ranks nothing. One
seed against another is kept beside it (``ceiling_by_budget``); while later seeds
run, the truth is the mean of the seeds finished for every architecture.

Proxies, all on equal footing (every one on the same architectures and split):
short training at 0.5x, 1x (the default proxy's budget) and 2x, each with the
truth's first two seeds: their seed-to-seed tau shows how the ceiling grows with the
budget (``ceiling_by_budget``), and the mean of the two seeds is scored as a
proxy of its own (``train_1x_mean2``: does a second seed buy more than a
doubled budget?); the sum of
training losses over the 1x run (Ru et al. 2021; lower is better, so negated);
the same 1x training at the fixed 64 px of earlier versions (``fixed64``);
synflow, naswot and grad_norm; params and FLOPs; the default proxy exactly as a
default search runs it, on the generated dataset (``synthetic_train``) and the
zero-cost scores there (transfer: does the generated data rank as real data
does?); and the rank-average ensemble of the best three. For each: Kendall tau
and Spearman against the truth, and its cost in seconds per architecture.

Slow on 2 cores, so it runs in the background and keeps every finished job in
``results/benchmarks/proxy_fidelity_real/jobs.jsonl`` (one line per job, fsynced):
a stopped run started again continues where it left off, and the summary
(``proxy_fidelity_real.json``) is rewritten after every job, marked partial
until every job is done. On a GPU pass ``--device cuda``; each job records its device
(``trained_on`` counts them).

Run::

    nohup python -m benchmarks.proxy_fidelity_real --dataset folder:../shared/datasets/cifar10 &
    python -m benchmarks.proxy_fidelity_real --summarise   # rewrite the summary from the jobs done so far
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks._common import RESULTS_DIR, append_record, read_records, write_result
from benchmarks.proxy_fidelity import kendall
from mvit_nas.config import ArchConfig
from mvit_nas.cost import count_cost
from mvit_nas.data import SYNTHETIC_TRAIN_SIZE, ProxyData
from mvit_nas.latency import measure_config
from mvit_nas.proxy import ProxySpec, TrialFailed, evaluate_proxy
from mvit_nas.seeds import fitted_seeds
from mvit_nas.settings import SearchSettings

NAME = "proxy_fidelity_real"
STATE_DIR = RESULTS_DIR / NAME
ARCHS_FILE, JOBS_FILE = STATE_DIR / "archs.json", STATE_DIR / "jobs.jsonl"
BUDGET_MS = 5.0
DEFAULT_IMAGES = round(ProxySpec.epochs * SYNTHETIC_TRAIN_SIZE)  # what the default proxy trains on: 3,200
GOAL_CEILING, GOAL_TAU, GOAL_SHARE = 0.7, 0.7, 0.9
ZERO_COST = ("synflow", "naswot", "grad_norm")
# A truth seed's ranking agreed with another's at tau 0.60: the truth is the mean of four, and its
# ceiling the agreement of two independent halves (a mean of two against a mean of two).
TRUTH_SEEDS = (0, 1, 2, 3)
SHORT_SEEDS = (0, 1)
SHORT_FACTORS = (1, 0.5, 2)  # short trainings, x the default proxy's images; each with every short seed
SEED = 0

_DATA: dict[str, ProxyData] = {}  # per worker process: "real" and "synthetic"


@dataclasses.dataclass(frozen=True)
class Job:
    """One score of one architecture: ``what`` names the proxy (or ``truth_s0``), ``data`` real or synthetic."""

    arch: str
    what: str
    data: str
    spec: dict[str, Any]
    config: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.what}"


# --- the architectures ---------------------------------------------------------------------


def pick_archs(count: int, settings: SearchSettings) -> dict[str, dict[str, Any]]:
    """``count`` feasible architectures of the default space spread over resolution and latency, and the fitted seeds.

    Candidates are random points of the space whose FLOPs are under the largest fitted
    seed's x 1.5 (a cheap filter: latency is measured only for those), measured with the
    default search's latency spec until each resolution has ``count`` feasible ones or
    600 were measured; then the resolutions share the picks evenly and each takes
    points at evenly spaced latency ranks.
    """
    seeds = fitted_seeds(settings, None, num_classes=10)
    limit = 1.5 * max(count_cost(seed.config).flops for seed in seeds)
    space = settings.search_space()
    rng = random.Random(SEED)
    pools: dict[int, list[tuple[float, ArchConfig]]] = {r: [] for r in space.choices["resolution"]}
    spec = dataclasses.replace(settings.latency, min_seconds=0.3, min_repeats=20)
    for _ in range(600):
        if all(len(pool) >= count for pool in pools.values()):
            break
        cfg = space.decode({knob: rng.choice(values) for knob, values in space.choices.items()}, num_classes=10)
        if count_cost(cfg).flops > limit or len(pools[cfg.resolution]) >= count:
            continue
        ms = measure_config(cfg, dataclasses.replace(spec, height=cfg.resolution, width=cfg.resolution)).median_ms
        if ms <= BUDGET_MS:
            pools[cfg.resolution].append((ms, cfg))
            print(f"feasible {cfg.resolution} px {ms:.2f} ms ({sum(map(len, pools.values()))} found)", flush=True)
    shares = dict.fromkeys(pools, 0)
    while sum(shares.values()) < count and any(shares[r] < len(pool) for r, pool in pools.items()):
        for resolution in (r for r in pools if shares[r] < len(pools[r])):  # round robin over what is left
            shares[resolution] += sum(shares.values()) < count
    archs: dict[str, dict[str, Any]] = {}
    for resolution, share in shares.items():
        pool = sorted(pools[resolution], key=lambda item: item[0])
        for rank in np.linspace(0, len(pool) - 1, share).round().astype(int).tolist() if share else []:
            ms, cfg = pool[rank]
            archs[f"r{resolution}_{len(archs):02d}"] = {"config": cfg.to_dict(), "latency_ms": ms}
    for seed in seeds:
        archs[seed.name] = {"config": seed.config.to_dict(), "latency_ms": seed.latency_ms}
    return archs


# --- the jobs ------------------------------------------------------------------------------


def _short(factor: float, seed: int = 0) -> str:
    """A short training's column: ``train_1x``, its second seed ``train_1x_s1``."""
    return f"train_{factor:g}x" + (f"_s{seed}" if seed else "")


def make_jobs(archs: dict[str, dict[str, Any]], truth_factor: float, truth_scale: float, device: str) -> list[Job]:
    """Every job, architecture by architecture (its truth first), in an order that spreads early results."""
    train_size = 45_000  # CIFAR-10's train split less the held-out 10%
    epochs = DEFAULT_IMAGES / train_size  # the default proxy's budget, in images, on the real data
    default = ProxySpec(device=device)
    real = dataclasses.replace(default, epochs=epochs)
    proxies: dict[str, tuple[str, ProxySpec]] = {
        **{f"truth_s{s}": ("real", dataclasses.replace(real, epochs=truth_factor * epochs, scale=truth_scale, seed=s))
           for s in TRUTH_SEEDS},
        **{_short(factor, seed): ("real", dataclasses.replace(real, epochs=factor * epochs, seed=seed))
           for seed in SHORT_SEEDS for factor in SHORT_FACTORS},
        "fixed64_1x": ("real", dataclasses.replace(real, scale=None, resolution=64)),
        **{kind: ("real", dataclasses.replace(real, kind=kind)) for kind in ZERO_COST},
        "synthetic_train": ("synthetic", default),
        **{f"synthetic_{kind}": ("synthetic", dataclasses.replace(default, kind=kind)) for kind in ZERO_COST[1:]},
    }  # fmt: skip
    names = list(archs)
    random.Random(SEED).shuffle(names)
    return [
        Job(arch, what, data, spec.to_dict(), archs[arch]["config"])
        for arch in names
        for what, (data, spec) in proxies.items()
    ]


def _init_worker(dataset: str, cache_dir: str) -> None:
    settings = SearchSettings(budget_ms=BUDGET_MS)
    _DATA["synthetic"] = settings.load_data(Path(cache_dir))
    _DATA["real"] = dataclasses.replace(settings, dataset=dataset).load_data()


def _run(job: Job) -> dict[str, Any]:
    spec = ProxySpec.from_dict(job.spec)
    started = time.perf_counter()
    record: dict[str, Any] = {"arch": job.arch, "what": job.what, "data": job.data, "device": spec.device}
    try:
        result = evaluate_proxy(ArchConfig.from_dict(job.config), spec, _DATA[job.data])
    except TrialFailed as error:
        return {**record, "score": None, "failure": error.reason}
    return {
        **record,
        "score": result.score,
        "train_loss": result.train_loss,
        "resolution": result.resolution,
        "seconds": round(time.perf_counter() - started, 2),
    }


def read_jobs() -> dict[str, dict[str, Any]]:
    return {f"{r['arch']}/{r['what']}": r for r in read_records(JOBS_FILE)}


# --- the summary ---------------------------------------------------------------------------


def _devices(done: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many jobs of each kind ran on each device (records from before the device was recorded: unrecorded)."""
    counts: dict[str, Counter[str]] = {}
    for record in done.values():
        counts.setdefault(record["what"], Counter())[record.get("device", "unrecorded")] += 1
    return {what: dict(devices) for what, devices in counts.items()}


def _spearman(table: pd.DataFrame, target: str, column: str) -> float | None:
    both = table[[column, target]].dropna()
    if len(both) < 3:
        return None
    value = stats.spearmanr(both[column], both[target]).statistic
    return None if np.isnan(value) else round(float(value), 4)


def summarise(archs: dict[str, dict[str, Any]], jobs: list[Job], settings_text: dict[str, Any]) -> dict[str, Any]:
    """Taus, Spearman, cost and the ceiling over what is done so far."""
    done = read_jobs()
    rows = []
    for name, arch in archs.items():
        cfg = ArchConfig.from_dict(arch["config"])
        cost = count_cost(cfg)
        row: dict[str, Any] = {"arch": name, "resolution": cfg.resolution, "latency_ms": arch["latency_ms"]}
        row.update(params=cost.params, flops=cost.flops)
        for key, record in done.items():
            if key.startswith(f"{name}/"):
                row[record["what"]] = record["score"]
                row[f"{record['what']}_seconds"] = record.get("seconds")
                if record["what"] == "train_1x" and record.get("train_loss") is not None:
                    row["sotl_1x"] = -record["train_loss"]  # equal steps for all: the mean ranks as the sum
        rows.append(row)
    table = pd.DataFrame(rows).set_index("arch")
    # The truth is the mean of the seeds finished for every architecture: while a later seed runs, the earlier ones.
    truths = [f"truth_s{s}" for s in TRUTH_SEEDS]
    for column in truths:
        if column not in table:
            table[column] = np.nan
    finished_seeds = [c for c in truths if table[c].notna().all()]
    complete = finished_seeds or truths[:2]
    table["truth"] = table[complete].mean(axis=1, skipna=False)
    half = len(complete) // 2
    table["truth_half_a"] = table[complete[:half]].mean(axis=1, skipna=False)
    table["truth_half_b"] = table[complete[half : 2 * half]].mean(axis=1, skipna=False)
    for factor in SHORT_FACTORS:  # the mean of two seeds of a short training, as a proxy of its own
        if _short(factor, 1) in table:
            pair = [_short(factor), _short(factor, 1)]
            table[f"{pair[0]}_mean2"] = table[pair].mean(axis=1, skipna=False)
            table[f"{pair[0]}_mean2_seconds"] = table[[f"{p}_seconds" for p in pair]].sum(axis=1, min_count=2)
    shorts = [_short(factor) for factor in SHORT_FACTORS]
    proxies = [p for p in (*shorts, "sotl_1x", "fixed64_1x", *ZERO_COST) if p in table]
    two_seeds = [f"{p}_mean2" for p in shorts if f"{p}_mean2" in table]  # cost two trainings: not an ensemble part
    second_seeds = [_short(f, 1) for f in SHORT_FACTORS if _short(f, 1) in table]  # how much one seed's tau varies
    transfer = [p for p in ("synthetic_train", *(f"synthetic_{k}" for k in ZERO_COST[1:])) if p in table]
    baselines = ["params", "flops"]
    taus = kendall(table, "truth", [*proxies, *second_seeds, *two_seeds, *transfer, *baselines])
    ceiling = kendall(table, "truth_half_a", ["truth_half_b"])["truth_half_b"]  # a truth of half the seeds
    # Every way to halve the seeds, the declared one first (which may also split them by the machine that trained them).
    splits = {}
    for part in itertools.combinations(complete[1:], half - 1) if half > 1 else ():
        a = [complete[0], *part]
        b = [c for c in complete if c not in a]
        halves = pd.DataFrame({"a": table[a].mean(axis=1, skipna=False), "b": table[b].mean(axis=1, skipna=False)})
        splits[f"{'+'.join(a)} vs {'+'.join(b)}"] = kendall(halves, "a", ["b"])["b"]["tau"]
    one_seed = kendall(table, truths[0], [truths[1]])[truths[1]]
    # How the seed-to-seed agreement grows with the training budget: each short training against its second seed.
    by_budget = {f"{factor:g}x": kendall(table, _short(factor), [_short(factor, 1)])[_short(factor, 1)]
                 for factor in SHORT_FACTORS if _short(factor, 1) in table}  # fmt: skip
    truth_factor = settings_text["truth"]["factor"]
    by_budget[f"{truth_factor:g}x, one seed"] = one_seed
    if half > 1:
        by_budget[f"{truth_factor:g}x, mean of {half} seeds"] = ceiling
    best = sorted(proxies, key=lambda p: -(taus[p]["tau"] if taus[p]["tau"] is not None else -2.0))[:3]
    if len(best) >= 2:
        table["ensemble"] = table[best].rank().mean(axis=1, skipna=False)
        taus.update(kendall(table, "truth", ["ensemble"]))
    for name in taus:
        taus[name]["spearman"] = _spearman(table, "truth", name)
        seconds = table.get(f"{name}_seconds")
        taus[name]["seconds_per_arch"] = None if seconds is None else round(float(seconds.mean()), 1)
    default_tau, ceiling_tau = taus.get("train_1x", {}).get("tau"), ceiling["tau"]
    baseline_taus = [taus[b]["tau"] for b in baselines if taus[b]["tau"] is not None]
    finished = len(done) >= len(jobs)
    passed = bool(
        finished
        and ceiling_tau is not None
        and ceiling_tau >= GOAL_CEILING
        and default_tau is not None
        and default_tau >= max(GOAL_TAU, GOAL_SHARE * ceiling_tau)
        and all(default_tau > tau for tau in baseline_taus)
    )
    return {
        "goal": f"ceiling (tau between two halves of the truth's seeds) >= {GOAL_CEILING}; "
        f"the default proxy's tau against the truth >= {GOAL_TAU} and >= {GOAL_SHARE} x the ceiling, "
        "above params and FLOPs",
        "passed": passed,
        "partial": not finished,
        "jobs_done": len(done),
        "jobs_total": len(jobs),
        "summary": {
            "ceiling_tau": ceiling_tau,
            "ceiling_n": ceiling["n"],
            "truth_seeds": len(finished_seeds),
            "default_proxy_tau": default_tau,
            "best_proxies": best,
            "ensemble_of": best if len(best) >= 2 else None,
        },
        "kendall_tau": taus,
        # Two halves of the seeds agree less than the whole truth would with another like it: a lower bound.
        "ceiling": ceiling,
        "ceiling_every_split": splits,
        "trained_on": _devices(done),
        "ceiling_by_budget": by_budget,
        **settings_text,
        "rows": json.loads(table.reset_index().to_json(orient="records")),
    }


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="folder:../shared/datasets/cifar10", help="the real dataset")
    parser.add_argument("--archs", type=int, default=20, help="random feasible architectures (plus the fitted seeds)")
    parser.add_argument("--truth-factor", type=float, default=10.0, help="truth images / the default proxy's")
    parser.add_argument("--truth-scale", type=float, default=ProxySpec.scale, help="truth input size / resolution")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--summarise", action="store_true", help="only rewrite the summary from the jobs done")
    args = parser.parse_args()
    if args.archs < 4:
        parser.error("--archs must be at least 4")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    settings = SearchSettings.create(BUDGET_MS, dataset=args.dataset)
    settings.load_data()  # a wrong --dataset fails here, before anything is measured
    if ARCHS_FILE.exists():  # fixed once picked: a continued run scores the same architectures
        archs = json.loads(ARCHS_FILE.read_text())
    else:
        archs = pick_archs(args.archs, settings)
        ARCHS_FILE.write_text(json.dumps(archs, indent=1) + "\n")
    jobs = make_jobs(archs, args.truth_factor, args.truth_scale, args.device)
    recipe = {
        "dataset": args.dataset,
        "budget_ms": BUDGET_MS,
        "latency_spec": settings.latency.to_dict(),
        "default_images": DEFAULT_IMAGES,
        "truth": {"factor": args.truth_factor, "scale": args.truth_scale, "seeds": list(TRUTH_SEEDS)},
        "split": "trained on CIFAR-10 train less a seeded, class-balanced 10%; scored on that 10%",
        "threads_per_worker": ProxySpec.threads,
    }
    if not args.summarise:
        recipe.update(device=args.device, workers=args.workers)  # this invocation's; `trained_on` counts each job's
        todo = [job for job in jobs if job.key not in read_jobs()]
        print(f"{len(jobs) - len(todo)}/{len(jobs)} jobs done; {len(todo)} to run", flush=True)
        with tempfile.TemporaryDirectory(prefix="proxy-fidelity-real-") as cache_dir:
            SearchSettings(budget_ms=BUDGET_MS).load_data(Path(cache_dir))  # generated once, read by the workers
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                args.workers, mp_context=context, initializer=_init_worker, initargs=(args.dataset, cache_dir)
            ) as pool:
                futures = [pool.submit(_run, job) for job in todo]
                for future in concurrent.futures.as_completed(futures):
                    record = future.result()
                    append_record(JOBS_FILE, record)
                    print(f"{record['arch']:14s} {record['what']:18s} {record.get('score')} "
                          f"{record.get('seconds')} s", flush=True)  # fmt: skip
                    write_result(NAME, summarise(archs, jobs, recipe))
    path = write_result(NAME, summarise(archs, jobs, recipe))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
