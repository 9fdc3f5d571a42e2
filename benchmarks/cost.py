"""Closed-form cost vs fvcore: exact agreement and how many times faster the closed form is.

Over N random valid configs (seeded) plus the three presets at 256 px, compares
``count_cost`` with ``fvcore_cost`` (params, total MACs and the per-operator
breakdown must all be equal) and times both: the closed form as the median of
repeated calls, fvcore as one build-and-trace per config (what the search would
otherwise pay per trial). The speed ratio is median(fvcore) / median(closed form).
Goal: every config agrees and the ratio is over 1000x.

Run: ``python -m benchmarks.cost [--n 50] [--seed 0]``; writes ``results/benchmarks/cost.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings
from typing import Any

import torch

from benchmarks._common import write_result
from mvit_nas.config import ArchConfig
from mvit_nas.config import preset as load_preset
from mvit_nas.cost import Cost, count_cost, fvcore_cost
from mvit_nas.space import random_config

GOAL_RATIO = 1000.0
CLOSED_FORM_REPEATS = 25


def _agrees(closed: Cost, traced: Cost) -> bool:
    return closed == traced and closed.flops_by_operator == traced.flops_by_operator


def _time_closed_form(cfg: ArchConfig) -> float:
    """Median seconds of one ``count_cost`` call."""
    samples = []
    for _ in range(CLOSED_FORM_REPEATS):
        start = time.perf_counter()
        count_cost(cfg)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _time_fvcore(cfg: ArchConfig) -> tuple[float, Cost]:
    start = time.perf_counter()
    traced = fvcore_cost(cfg)
    return time.perf_counter() - start, traced


def run(n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    named = [(f"random{i:02d}", random_config(rng)) for i in range(n)]
    named += [(name, load_preset(name)) for name in ("xxs", "xs", "s")]
    fvcore_cost(named[0][1])  # warm-up: first trace pays for imports and JIT set-up
    rows = []
    for name, cfg in named:
        closed_s = _time_closed_form(cfg)
        fvcore_s, traced = _time_fvcore(cfg)
        closed = count_cost(cfg)
        rows.append(
            {
                "name": name,
                "resolution": cfg.resolution,
                "params": closed.params,
                "flops": closed.flops,
                "fvcore_flops": traced.flops,
                "agree": _agrees(closed, traced),
                "closed_form_us": round(closed_s * 1e6, 2),
                "fvcore_ms": round(fvcore_s * 1e3, 2),
            }
        )
        print(
            f"{name:9s} {cfg.resolution:4d}px agree={rows[-1]['agree']!s:5s} "
            f"closed {closed_s * 1e6:8.1f} us  fvcore {fvcore_s * 1e3:8.1f} ms"
        )
    closed_median = statistics.median(row["closed_form_us"] for row in rows) / 1e6
    fvcore_median = statistics.median(row["fvcore_ms"] for row in rows) / 1e3
    agreed = sum(row["agree"] for row in rows)
    ratio = fvcore_median / closed_median
    return {
        "goal": f">{GOAL_RATIO:.0f}x",
        "passed": agreed == len(rows) and ratio > GOAL_RATIO,
        "configs": len(rows),
        "random_configs": n,
        "presets": ["xxs", "xs", "s"],
        "seed": seed,
        "agreement": {"agreed": agreed, "total": len(rows), "disagreeing": [r["name"] for r in rows if not r["agree"]]},
        "closed_form_median_us": round(closed_median * 1e6, 2),
        "fvcore_median_ms": round(fvcore_median * 1e3, 2),
        "speed_ratio": round(ratio, 1),
        "method": (
            f"closed form: median of {CLOSED_FORM_REPEATS} count_cost calls per config; fvcore: one fvcore_cost per "
            "config (builds the model and traces it, attention handler registered); ratio of the medians over configs"
        ),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="number of random configs (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the config generator (default 0)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    payload = run(args.n, args.seed)
    path = write_result("cost", payload)
    agreement = payload["agreement"]
    print(
        f"agreement {agreement['agreed']}/{agreement['total']}; closed form {payload['closed_form_median_us']} us, "
        f"fvcore {payload['fvcore_median_ms']} ms, ratio {payload['speed_ratio']}x "
        f"(goal {payload['goal']}: {'passed' if payload['passed'] else 'FAILED'}) -> {path}"
    )


if __name__ == "__main__":
    main()
