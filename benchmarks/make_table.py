"""Regenerate ``results/benchmarks/README.md`` from every ``results/benchmarks/*.json``.

One row per benchmark: goal, measured value, pass / falls short, date and
machine, all read from the JSON (never typed by hand). A benchmark of the
suite without a JSON yet gets a "not run yet" row; a quick (smoke-test) result
is labelled as such. Each row says the commit it was measured on and whether it
is stale: whether the code it measures (:data:`MEASURES`) changed since
(docstrings and comments aside). The GPU section shows ``gpu.json`` when it
exists and otherwise says that no GPU result exists yet: a CPU figure is never
presented as a GPU one.

Run::

    python -m benchmarks.make_table
"""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR

README = RESULTS_DIR / "README.md"
# The suite of issue 4, in reading order; any other JSON found is listed after these.
SUITE = (
    "latency_predictor",
    "latency_repeatability",
    "latency_under_load",
    "proxy_fidelity",
    "proxy_fidelity_real",
    "search_efficiency",
    "multi_fidelity",
    "scaling",
    "vs_timm",
    "cost",
)
SKIP_KEYS = {"benchmark", "git", "machine", "goal", "passed", "quick", "duration_s", "load_average_1min"}
REPO = RESULTS_DIR.parent.parent
# The code each benchmark measures: a change there after the measured commit makes its row stale.
MEASURES: dict[str, tuple[str, ...]] = {
    "cost": ("mvit_nas/cost.py", "mvit_nas/config.py", "mvit_nas/model.py"),
    "latency_predictor": ("mvit_nas/latency", "mvit_nas/predictor", "mvit_nas/model.py", "mvit_nas/config.py"),
    "latency_repeatability": ("mvit_nas/latency", "mvit_nas/model.py"),
    "latency_under_load": ("mvit_nas/latency", "mvit_nas/model.py", "mvit_nas/search.py", "mvit_nas/evaluation.py"),
    "proxy_fidelity": ("mvit_nas/proxy", "mvit_nas/data", "mvit_nas/model.py"),
    "proxy_fidelity_real": ("mvit_nas/proxy", "mvit_nas/data", "mvit_nas/model.py"),
    "multi_fidelity": (
        "mvit_nas/search.py",
        "mvit_nas/fidelity.py",
        "mvit_nas/evaluation.py",
        "mvit_nas/proxy",
        "mvit_nas/verify.py",
        "mvit_nas/latency",
        "mvit_nas/recheck.py",
    ),
    # report: only its front and hypervolume (report/front.py), not the summary it writes
    "search_efficiency": (
        "mvit_nas/search.py",
        "mvit_nas/settings.py",
        "mvit_nas/space.py",
        "mvit_nas/report/front.py",
    ),
    "scaling": ("mvit_nas/search.py", "mvit_nas/executors.py", "mvit_nas/evaluation.py", "mvit_nas/proxy"),
    "vs_timm": ("mvit_nas/model.py", "mvit_nas/latency"),
}


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def _cost(p: dict[str, Any]) -> str:
    agreement = p["agreement"]
    return (
        f"{agreement['agreed']}/{agreement['total']} configs agree with fvcore; "
        f"closed form {p['speed_ratio']:,.0f}x faster ({p['closed_form_median_us']} us vs {p['fvcore_median_ms']} ms)"
    )


def _vs_timm(p: dict[str, Any]) -> str:
    def cell(r: dict[str, Any]) -> str:
        interval = f" [{r['ratio_ci95'][0]:.2f}, {r['ratio_ci95'][1]:.2f}]" if "ratio_ci95" in r else ""
        return f"{r['variant']}/{r['backend']} {r['ratio']:.2f}{interval}"

    return "ours/timm latency (95% interval): " + ", ".join(cell(r) for r in p["results"])


def _proxy_fidelity(p: dict[str, Any]) -> str:
    taus = p["kendall_tau"]

    def tau(name: str) -> str:
        value = taus.get(name, {}).get("tau")
        return "n/a" if value is None else f"{value:.2f}"

    zero_cost = ", ".join(f"{kind} {tau(kind)}" for kind in ("synflow", "naswot", "grad_norm"))
    zero_cost += "".join(f"; {name} {tau(name)}" for name in p.get("alternative_short_budgets", {}))
    over = f"tau vs {p['factor']:g}x budget over {p['summary']['configs']} configs"
    return (
        f"{over}: short training {tau('short_training')}; params {tau('params')}, "
        f"FLOPs {tau('flops')} ({tau('flops_at_proxy_resolution')} at proxy res.); {zero_cost}"
    )


def _search_efficiency(p: dict[str, Any]) -> str:
    s, per = p["summary"], p["per_sampler"]
    means = ", ".join(f"{name} {row['mean']:.3f}+-{row['std'] or 0:.3f}" for name, row in per.items())
    return (
        f"default {s['default_sampler']} = {s['default_vs_random']:.2f}x random; winner {s['winner']}; "
        f"hypervolume mean+-std over {len(p['seeds'])} seeds x {p['trials_per_study']} trials: {means}"
    )


def _scaling(p: dict[str, Any]) -> str:
    s = p["summary"]
    tph = s["trials_per_hour"]
    return (
        f"Ray overhead {_pct(s['ray_overhead'])} per trial (noise floor {100 * s['noise_floor']:.1f}%, "
        f"start-up {s['ray_startup_s']:.1f} s apart); "
        f"2 workers {s['speedup_2_vs_1']:.2f}x 1 worker ({tph['ray-1']:.0f} -> {tph['ray-2']:.0f} trials/h; "
        f"in-process {tph['local']:.0f})"
    )


def _latency_under_load(p: dict[str, Any]) -> str:
    s = p["summary"]
    if s["loaded_ms"] is None:
        return f"idle {s['idle_ms']:.2f} ms; no loaded measurement ({p.get('error')})"
    return (
        f"{p['config']} judged: idle {s['idle_ms']:.2f} ms, under a 2-worker search {s['loaded_ms']:.2f} ms "
        f"({_pct(s['deviation'])}; worst round {100 * s['worst_round_deviation']:.1f}%); raw median "
        f"{_pct(s['raw_deviation'])} (worst round {100 * s['raw_worst_round_deviation']:.1f}%)"
    )


def _latency_predictor(p: dict[str, Any]) -> str:
    parts = [
        f"{backend}: {100 * row['within_10pct']:.0f}% within +/-10% "
        f"(median |error| {row['median_abs_error_pct']:.1f}%, {row['configs']} configs)"
        for backend, row in p["backends"].items()
    ]
    return "; ".join(parts)


def _latency_repeatability(p: dict[str, Any]) -> str:
    parts = []
    for threads, row in p["results"].items():
        cells = row["variants"].values()
        judged = max(max(c["idle"]["judged_spread"], c["busy"]["judged_spread"]) for c in cells)
        raw = max(max(c["idle"]["raw_spread"], c["busy"]["raw_spread"]) for c in cells)
        busy = max(abs(c["busy_deviation"]) for c in cells)
        parts.append(
            f"{threads.replace('_', ' ')}: judged spread up to {100 * judged:.1f}% (raw {100 * raw:.1f}%), "
            f"busy core {100 * busy:.1f}% from idle"
        )
    # Results from before sessions were rotated timed one session of each model.
    sessions = p.get("sessions", 1)  # a list when designs were compared: the first is judged
    sessions = sessions[0] if isinstance(sessions, list) else sessions
    how = f"{p['backend']}, {p.get('min_seconds', 1):g} s and {sessions} session(s) per model"
    return f"{'; '.join(parts)} ({how}, {p['runs']} processes per preset, idle and busy)"


def _proxy_fidelity_real(p: dict[str, Any]) -> str:
    s, taus = p["summary"], p["kendall_tau"]

    def tau_text(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def tau(name: str) -> str:
        return tau_text(taus.get(name, {}).get("tau"))

    ceiling = tau_text(s["ceiling_tau"])
    partial = f"PARTIAL ({p['jobs_done']}/{p['jobs_total']} jobs): " if p.get("partial") else ""
    growth = ", ".join(f"{budget} {tau_text(pair['tau'])}" for budget, pair in p.get("ceiling_by_budget", {}).items())
    splits = ", ".join(tau_text(value) for value in p.get("ceiling_every_split", {}).values())
    return (
        f"{partial}truth ceiling (half the seeds vs the other half) tau {ceiling} over {s['ceiling_n']} archs"
        f"{f' (every halving: {splits})' if splits else ''}"
        f"{f' (seed vs seed by budget: {growth})' if growth else ''}; default proxy "
        f"{tau('train_1x')} (second seed {tau('train_1x_s1')}), 2x images {tau('train_2x')}, sotl {tau('sotl_1x')}, "
        f"fixed 64 px {tau('fixed64_1x')}, synflow {tau('synflow')}, "
        f"naswot {tau('naswot')}, params {tau('params')}, FLOPs {tau('flops')}, ensemble {tau('ensemble')}, "
        f"mean of two seeds of the default proxy {tau('train_1x_mean2')}; "
        f"generated-data default proxy {tau('synthetic_train')}"
    )


def _multi_fidelity(p: dict[str, Any]) -> str:
    s = p["summary"]
    hv = s["mean_hypervolume_verified_front"]
    ratios = s["hypervolume_ratio_over_single"]

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    partial = f"PARTIAL ({p['runs_done']}/{p['runs_planned']} runs): " if p.get("partial") else ""
    runs = "; ".join(
        f"{r['arm']} seed {r['seed']}: {r['finished_trials']} trials, rungs {r['architectures_per_rung']}, "
        f"front {len(r['front'])}, verified HV with its own latencies {r['hypervolume_verified_front']:.3f}"
        for r in p["runs"]
    )
    arms = ", ".join(f"{arm} {shown(value)}" for arm, value in hv.items())
    over = ", ".join(f"{arm} {shown(value)}" for arm, value in ratios.items())
    return (
        f"{partial}{len(p['runs'])} runs of {p['minutes']:g} min, {p['proxy_images']} proxy images; mean verified "
        f"hypervolume ({s.get('latencies', 'as searched')}): {arms}; over single: {over}; {runs}"
    )


def _gpu(p: dict[str, Any]) -> str:
    s = p["summary"]
    return (
        f"{s['device']}: {s['cells_measured']}/{s['cells']} latency cells; search "
        f"{s['search_completed_trials']} completed, {s['search_failed_trials']} failed"
    )


def _default_search(p: dict[str, Any]) -> str:
    remeasured = [point["remeasured_median_ms"] for point in p["front"]]
    spread = f"{min(remeasured):.2f}-{max(remeasured):.2f} ms" if remeasured else "none"
    return (
        f"`mvit-nas search --budget-ms {p['budget_ms']:g}`: {p['search_seconds'] / 60:.1f} min, front of "
        f"{p['front_size']}; front points re-profiled: {spread}"
    )


SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "default_search": _default_search,
    "multi_fidelity": _multi_fidelity,
    "latency_predictor": _latency_predictor,
    "latency_repeatability": _latency_repeatability,
    "proxy_fidelity_real": _proxy_fidelity_real,
    "cost": _cost,
    "vs_timm": _vs_timm,
    "proxy_fidelity": _proxy_fidelity,
    "search_efficiency": _search_efficiency,
    "scaling": _scaling,
    "latency_under_load": _latency_under_load,
    "gpu": _gpu,
}


def _generic(payload: dict[str, Any]) -> str:
    """For a benchmark without a summary function: its ``summary`` mapping, else its top-level scalars."""
    source = payload.get("summary") if isinstance(payload.get("summary"), dict) else payload
    flat: dict[str, Any] = {}
    for key, value in source.items():
        if key in SKIP_KEYS:
            continue
        if isinstance(value, dict):  # one level of nesting, e.g. per backend
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    parts = []
    for key, value in flat.items():
        if isinstance(value, (dict, list, str)) or value is None:
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "; ".join(parts[:8]) or "see the JSON"


def _benchmark_of(name: str, known: Iterable[str]) -> str | None:
    """Of ``known`` benchmarks, the one result file ``name`` belongs to: a variant's file (e.g.
    proxy_fidelity_lr3e-3, from ``--name``) belongs to the benchmark its name extends."""
    return max((key for key in known if name == key or name.startswith(key + "_")), key=len, default=None)


def summarise(name: str, payload: dict[str, Any]) -> str:
    try:
        return SUMMARIES[_benchmark_of(name, SUMMARIES) or name](payload)
    except (KeyError, TypeError, ValueError, IndexError):  # an unknown or changed layout: fall back, never fail
        return _generic(payload)


def _machine(payload: dict[str, Any]) -> str:
    machine = payload.get("machine", {})
    cpu = f"{machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} CPUs)"
    if payload.get("benchmark") == "gpu":
        return f"GPU: {payload.get('device') or machine.get('cuda')}; host {cpu}"
    if payload.get("device") == "cuda":  # a CPU benchmark run on a GPU (e.g. proxy_fidelity --device cuda)
        return f"GPU: {machine.get('cuda')}; host {cpu}"
    return f"CPU: {cpu}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def load_results(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    results = {}
    for path in sorted(directory.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            results[path.stem] = {"goal": "?", "passed": False, "error": f"unreadable: {error}"}
    return results


def _gpu_section(payload: dict[str, Any] | None) -> list[str]:
    lines = ["## GPU", ""]
    if payload is None:
        lines += [
            "No GPU result exists yet: `benchmarks/gpu.py` has not been run on a CUDA machine. "
            "Every figure above was measured on the CPU named in its row; none of them is a GPU figure.",
            "",
        ]
        return lines
    device = payload.get("device") or payload.get("machine", {}).get("cuda")
    date = payload.get("machine", {}).get("date", "?")
    quick = " (quick run)" if payload.get("quick") else ""
    lines += [f"Device: **{device}**, {date}{quick}.", "", "| variant | batch | backend | median ms | images/s |"]
    lines.append("|---|---:|---|---:|---:|")
    for row in payload.get("profile", []):
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['batch_size']} | {row['backend']} | {_cell(row['error'])} | |")
        else:
            lines.append(
                f"| {row['variant']} | {row['batch_size']} | {row['backend']} | "
                f"{row['median_ms']:.3f} | {row['images_per_s']:,.0f} |"
            )
    search = payload.get("search", {})
    if search:
        lines += [
            "",
            f"Short search: budget {search.get('budget_ms', 0):.3f} ms ({search.get('budget_source', '?')}), "
            f"{search.get('completed', 0)} trials completed, {search.get('failed', 0)} failed"
            + (f"; error: {_cell(search['error'])}" if search.get("error") else "")
            + ".",
        ]
    return [*lines, ""]


def code_of(source: str) -> str:
    r"""What a Python file does, without what it says: its syntax tree less docstrings (comments never reach it).

    A docstring or comment edit leaves a benchmark's figures as they were, so it does not make them stale.

    >>> code_of('def f():\n    "Old words."\n    return 1  # why') == code_of('def f():\n    "New."\n    return 1')
    True
    >>> code_of("x = 1") == code_of("x = 2")
    False
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        documented = isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        if documented and node.body and isinstance(node.body[0], ast.Expr):
            first = node.body[0].value
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _code_changed(commit: str, path: str) -> bool:
    """Whether ``path`` does something else at HEAD than at ``commit`` (any change, for a file that is not Python)."""
    versions = [
        subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True)
        for rev in (commit, "HEAD")
    ]
    if any(version.returncode != 0 for version in versions) or not path.endswith(".py"):
        return True
    try:
        return code_of(versions[0].stdout) != code_of(versions[1].stdout)
    except SyntaxError:
        return True


def freshness(name: str, payload: dict[str, Any]) -> str:
    """Whether a result still describes the code: the commit it was measured on, and what changed since."""
    git = payload.get("git") or {}
    commit = git.get("commit")
    if not commit:
        return "**stale?** measured before results recorded their commit"
    benchmark = _benchmark_of(name, MEASURES)
    paths = MEASURES[benchmark] if benchmark else ("mvit_nas",)
    changed = subprocess.run(
        ["git", "diff", "--name-only", commit, "HEAD", "--", *paths], cwd=REPO, capture_output=True, text=True
    )
    if changed.returncode != 0:
        return f"{commit[:7]}: not in this repository's history"
    files = [path for path in changed.stdout.split() if _code_changed(commit, path)]
    dirty = " (on uncommitted changes)" if git.get("dirty") else ""
    if files:
        shown = ", ".join(files[:2]) + (f" and {len(files) - 2} more" if len(files) > 2 else "")
        return f"{commit[:7]}{dirty}: **stale**, {shown} changed since"
    return f"{commit[:7]}{dirty}: current"


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks.make_table` from `results/benchmarks/*.json`; do not edit by hand.",
        "Each benchmark is one script, `python -m benchmarks.NAME`, that writes `NAME.json`.",
        "",
        "A row is **stale** when the code it measures changed after the commit it was measured on "
        "(docstrings and comments aside).",
        "",
        "| Benchmark | Goal | Measured | Result | Date | Machine | Commit |",
        "|---|---|---|---|---|---|---|",
    ]
    names = list(SUITE) + sorted(set(results) - set(SUITE) - {"gpu"})
    for name in names:
        payload = results.get(name)
        if payload is None:
            lines.append(f"| `{name}` | | not run yet | | | | |")
            continue
        verdict = "pass" if payload.get("passed") else "**falls short**"
        if payload.get("partial"):  # a long benchmark still running, or stopped to be continued
            verdict = "not finished (partial result)"
        if payload.get("quick"):
            verdict += " (quick run, not the full benchmark)"
        date = str(payload.get("machine", {}).get("date", "?"))[:10]
        cells = [f"`{name}`", payload.get("goal", "?"), summarise(name, payload), verdict, date, _machine(payload)]
        cells.append(freshness(name, payload))
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines.append("")
    lines += _gpu_section(results.get("gpu"))
    return "\n".join(lines)


def main() -> None:
    README.parent.mkdir(parents=True, exist_ok=True)
    README.write_text(render(load_results()))
    print(f"wrote {README}")


if __name__ == "__main__":
    main()
