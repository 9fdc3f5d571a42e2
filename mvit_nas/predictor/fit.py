"""Fitting the predictor: relative non-negative least squares per block kind, the whole-network correction, errors.

Per block kind, latency is fitted as a non-negative combination of the block's
cost features, minimising the *relative* error; non-negative weights keep the
model monotone (more work never predicts less time). A block sum is biased
against the whole network (per-call overhead counted once per block, layout
changes and fusions at block edges, cache effects), so a :class:`Correction` is
fitted on whole configs: a power law ``whole = exp(a) * block_sum ** b``, or one
scale per block kind, whichever predicts the calibration configs better
left-one-out.

Example:

>>> import numpy as np
>>> features = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
>>> np.round(fit_relative_nnls(features, np.array([2.0, 3.0, 4.0])), 6)
array([1., 1.])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

# A fitted exponent outside this range means the few calibration points are noise, not bias.
EXPONENT_RANGE = (0.5, 2.0)


def fit_relative_nnls(features: np.ndarray, targets: np.ndarray, reweights: int = 2) -> np.ndarray:
    """Non-negative ``w`` making ``features @ w`` close to ``targets`` in *relative* terms."""
    # Residuals divided by the target make a 1 ms block off by 0.1 ms count as much as a
    # 10 ms block off by 1 ms. Dividing by the target alone biases the fit low (over-predicting
    # costs more than under-predicting), so the fit is redone with sqrt(target * prediction),
    # which weighs both directions alike, as an error in logs would. Columns are rescaled so
    # that NNLS sees comparable magnitudes; the weights are scaled back.
    scale = targets
    for _ in range(reweights + 1):
        scaled = features / scale[:, None]
        norms = np.linalg.norm(scaled, axis=0)
        norms[norms == 0] = 1.0
        weights = nnls(scaled / norms, targets / scale)[0] / norms
        predicted = features @ weights
        scale = np.sqrt(targets * np.maximum(predicted, 1e-3 * targets))
    return weights


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """``(predicted - measured) / measured``, element-wise."""
    return (predicted - measured) / measured


def error_summary(errors: np.ndarray) -> dict[str, float]:
    """Count, median and largest absolute error in percent, and the share within 10%, of relative ``errors``.

    >>> error_summary(np.array([0.05, -0.2]))
    {'n': 2, 'median_abs_pct': 12.5, 'max_abs_pct': 20.0, 'within_10pct': 0.5}
    """
    absolute = np.abs(errors)
    return {
        "n": len(errors),
        "median_abs_pct": float(np.median(absolute) * 100) if len(errors) else math.nan,
        "max_abs_pct": float(absolute.max() * 100) if len(errors) else math.nan,
        "within_10pct": float(np.mean(absolute <= 0.10)) if len(errors) else math.nan,
    }


def cross_validated(features: np.ndarray, targets: np.ndarray, folds: int = 5) -> np.ndarray:
    """Out-of-fold relative errors: how far the fitted model is off on shapes it has not seen."""
    count = len(targets)
    folds = min(folds, count)
    if folds < 2:
        return np.zeros(0)
    order = np.random.default_rng(0).permutation(count)
    errors = np.empty(count)
    for fold in range(folds):
        held = order[fold::folds]
        kept = np.setdiff1d(order, held)
        weights = fit_relative_nnls(features[kept], targets[kept])
        errors[held] = relative_errors(features[held] @ weights, targets[held])
    return errors


@dataclass(frozen=True)
class Correction:
    """``whole = exp(log_scale) * (sum over kinds of kind_weight * kind_sum) ** exponent``."""

    form: str
    log_scale: float
    exponent: float
    kind_weights: tuple[float, ...]

    def apply(self, kind_sums: np.ndarray) -> np.ndarray:
        return np.exp(self.log_scale) * np.power(kind_sums @ np.asarray(self.kind_weights), self.exponent)


def _fit_power(kind_sums: np.ndarray, measured: np.ndarray) -> Correction | None:
    """One power law on the plain block sum (least squares in logs)."""
    logs, targets = np.log(kind_sums.sum(axis=1)), np.log(measured)
    ones = (1.0,) * kind_sums.shape[1]
    if len(measured) >= 3 and np.ptp(logs) > 0:
        design = np.column_stack([np.ones_like(logs), logs])
        (log_scale, exponent), *_ = np.linalg.lstsq(design, targets, rcond=None)
        # An exponent far from 1 says the few points are noise, not a bias of the sum.
        if EXPONENT_RANGE[0] <= exponent <= EXPONENT_RANGE[1]:
            return Correction("power", float(log_scale), float(exponent), ones)
    return Correction("scale", float(np.mean(targets - logs)), 1.0, ones)


def _fit_per_kind(kind_sums: np.ndarray, measured: np.ndarray) -> Correction | None:
    """One scale per block kind: a bias that differs by kind (e.g. conv layout changes at block edges)."""
    if len(measured) < 3 * kind_sums.shape[1]:
        return None
    weights = fit_relative_nnls(kind_sums, measured)
    if np.any(weights <= 0):  # a kind the data says costs nothing: overfitted noise
        return None
    return Correction("per_kind", 0.0, 1.0, tuple(float(w) for w in weights))


_CORRECTIONS: tuple[Callable[[np.ndarray, np.ndarray], Correction | None], ...] = (_fit_power, _fit_per_kind)


def fit_correction(kind_sums: np.ndarray, measured: np.ndarray) -> tuple[Correction, dict[str, float]]:
    """The correction form with the lowest leave-one-out error on the calibration configs, and every form's error.

    ``kind_sums``: (configs, kinds) predicted block ms summed per kind; ``measured``: the
    configs' measured ms. The simplest form (first in :data:`_CORRECTIONS`) wins ties: a
    few noisy points should not buy parameters. Errors are mean absolute log errors in
    percent, per form.
    """
    scores: dict[str, float] = {}
    best: tuple[float, Correction] | None = None
    for fit in _CORRECTIONS:
        full = fit(kind_sums, measured)
        if full is None:
            continue
        errors = []
        for held in range(len(measured)):
            kept = np.arange(len(measured)) != held
            partial = fit(kind_sums[kept], measured[kept])
            if partial is None:
                break
            errors.append(abs(math.log(float(partial.apply(kind_sums[held])) / measured[held])))
        else:
            score = float(np.mean(errors)) if errors else math.inf
            scores[full.form] = round(100 * score, 3)
            if best is None or score < best[0]:
                best = (score, full)
    assert best is not None  # the power form always fits
    return best[1], scores
