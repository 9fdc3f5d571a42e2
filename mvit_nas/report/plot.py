"""``pareto.png``: accuracy against latency for every completed trial, the front, the seeds and the budget;
``verify.png``: the verified models' proxy and verified accuracy side by side.

Example::

    study, settings = read_study(run_dir), load_settings(run_dir)
    plot_front(study, settings, front(study), run_dir / "pareto.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mvit_nas.atomic import atomic_path
from mvit_nas.report.front import seed_trials
from mvit_nas.report.tables import accuracy_scale, front_units, spec_text
from mvit_nas.run import is_feasible
from mvit_nas.settings import SearchSettings

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with the package
    from matplotlib.axes import Axes

    from mvit_nas.report.verification import VerifyReport

__all__ = ["plot_front", "plot_verification"]


def _plot_trials(ax: Axes, study: optuna.Study, front_trials: Sequence[FrozenTrial], scale: float) -> None:
    """Every completed trial off the front: feasible ones at their accuracy, over-budget ones at 0 (untrained)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    front_numbers = {t.number for t in front_trials}
    feasible = [t for t in complete if is_feasible(t) and t.number not in front_numbers]
    infeasible = [t for t in complete if not is_feasible(t)]
    if infeasible:
        latencies = [t.values[1] for t in infeasible]
        ax.scatter(latencies, [0.0] * len(infeasible), marker="x", color="0.65", label="over budget (not trained)")
    if feasible:
        accuracies = [t.values[0] * scale for t in feasible]
        ax.scatter([t.values[1] for t in feasible], accuracies, color="tab:blue", alpha=0.6, label="feasible")


def _plot_front(ax: Axes, front_trials: Sequence[FrozenTrial], scales: Sequence[float], budget_ms: float) -> None:
    if not front_trials:
        return
    latencies = [t.values[1] for t in front_trials]
    accuracies = [t.values[0] * scale for t, scale in zip(front_trials, scales, strict=True)]
    # Best accuracy reachable within each latency: a step up at every front point, held to the budget.
    ax.step([*latencies, budget_ms], [*accuracies, accuracies[-1]], where="post", color="tab:red", lw=1.5)
    ax.scatter(latencies, accuracies, color="tab:red", zorder=3, label=f"Pareto front ({len(front_trials)})")
    for trial, x, y in zip(front_trials, latencies, accuracies, strict=True):
        ax.annotate(f"#{trial.number}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)


def _plot_seeds(ax: Axes, study: optuna.Study, scale: float) -> None:
    for name, seed in seed_trials(study).items():
        feasible = is_feasible(seed)
        y = seed.values[0] * scale if feasible else 0.0
        colour = "gold" if feasible else "0.8"
        ax.scatter([seed.values[1]], [y], marker="*", s=180, color=colour, edgecolor="black", zorder=4)
        ax.annotate(name, (seed.values[1], y), textcoords="offset points", xytext=(6, 6), fontweight="bold")


def plot_front(study: optuna.Study, settings: SearchSettings, front_trials: Sequence[FrozenTrial], path: Path) -> Path:
    """Draw the run's accuracy-latency plot into ``path`` (PNG, written atomically)."""
    # The object-oriented API with the Agg canvas draws without pyplot's global state or a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale, unit = accuracy_scale(settings)
    units = front_units(settings, front_trials)
    budget_ms = settings.budget_ms
    figure = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    rung0_ax, label = ax, f"proxy accuracy ({unit})"
    if any(front_unit != (scale, unit) for front_unit in units):
        # Successive halving screened by a zero-cost score: the front is trained accuracy, the rest of the
        # trials (and the seeds) have only the score, on an axis of its own.
        rung0_ax, label = ax.twinx(), "accuracy (%) at each front point's highest rung"
        rung0_ax.set_ylabel(f"rung 0 ({unit}): other trials and seeds")
    _plot_trials(rung0_ax, study, front_trials, scale)
    _plot_front(ax, front_trials, [front_scale for front_scale, _ in units], budget_ms)
    _plot_seeds(rung0_ax, study, scale)
    ax.axvline(budget_ms, color="black", linestyle="--", lw=1, label=f"budget {budget_ms:g} ms")
    # One legend entry for all seeds, however many ran.
    ax.scatter([], [], marker="*", s=120, color="gold", edgecolor="black", label="seeds (xxs / xs / s)")
    ax.set_xlabel("latency, judged (ms)")
    ax.set_ylabel(label)
    ax.set_title(f"Accuracy vs latency — {spec_text(study, settings)}", fontsize=9)
    return _save(figure, ax, path)


def plot_verification(report: VerifyReport, path: Path) -> Path:
    """Draw ``verify.png``: per verified model, its proxy score (filled) joined to its verified accuracy (hollow,
    a bar over the training seeds' range), against latency; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import offset_copy

    figure = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    # Verified points sit a few points right of their proxy point, so that the seed-range bar and the
    # line joining the two stay apart when a model's latency is shared with nothing else.
    beside = offset_copy(ax.transData, fig=figure, x=7, units="points")
    # A zero-cost proxy's score is no accuracy: it gets an axis of its own, on the right.
    trained = report.proxy_kind == "train"
    proxy_ax = ax if trained else ax.twinx()
    scale = 100.0 if trained else 1.0
    for model in report.models:
        colour = "goldenrod" if model.is_seed else "tab:red" if model.on_front else "tab:blue"
        x, proxy, verified = model.latency_ms, model.proxy_score * scale, model.accuracy * 100
        low, high = min(model.accuracies) * 100, max(model.accuracies) * 100
        bar = [[verified - low], [high - verified]]
        ax.update_datalim([(x, low), (x, high)])  # artists drawn "beside" do not widen the axes by themselves
        proxy_ax.scatter([x], [proxy], color=colour, marker="*" if model.is_seed else "o", s=40, zorder=3)
        if trained:
            line = {"arrowstyle": "-", "linestyle": ":", "color": colour, "shrinkA": 0, "shrinkB": 4}
            ax.annotate("", (x, verified), xycoords=beside, xytext=(x, proxy), textcoords="data", arrowprops=line)
        ax.errorbar([x], [verified], yerr=bar, fmt="o", mfc="white", color=colour, capsize=3, transform=beside)
        label = f"#{model.trial} {model.role}"
        ax.annotate(label, (x, verified), xycoords=beside, textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.margins(x=0.08)
    ax.autoscale_view()
    ax.scatter([], [], color="0.3", label=f"proxy ({report.proxy_kind}, filled)")
    ax.scatter([], [], color="0.3", facecolors="white", label=f"verified, {report.epochs:g} epochs (bar: seed range)")
    tau = "n/a" if report.kendall_tau is None else f"{report.kendall_tau:.2f}"
    ax.set_title(f"Proxy vs verified accuracy — Kendall tau {tau} over {len(report.models)} models", fontsize=9)
    ax.set_xlabel("latency, judged (ms)")
    ax.set_ylabel("accuracy (%)" if trained else "verified accuracy (%)")
    if not trained:
        proxy_ax.set_ylabel(f"proxy score ({report.proxy_kind})")
    return _save(figure, ax, path)


def _save(figure: Any, ax: Any, path: Path) -> Path:
    """Grid, legend, tight layout, then the PNG written atomically."""
    ax.grid(alpha=0.3)
    handles = [artist for axes in figure.axes for artist in axes.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=8, loc="best")  # a twin axis's artists too
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
