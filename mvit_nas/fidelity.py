"""Multi-fidelity search: a cheap score for every architecture, longer training for the few that can reach the front.

Architectures that fit one latency budget are close in accuracy, and a single short
training cannot order them. Successive halving (Li et al., JMLR 2018; asynchronous as
ASHA, Li et al., MLSys 2020) spends the training where the front is decided:

- **rung 0** is the run's own proxy (the trial's evaluation, as in a single-fidelity run);
- **rung k >= 1** trains the architecture afresh for ``base x eta^k`` epochs (``base``:
  the proxy's epochs), the last rung for ``max_epochs`` (by default the verification
  budget, :data:`mvit_nas.verify.EPOCHS_FACTOR` x ``base``);
- an architecture is **promoted** from rung k when it is among the best
  ``floor(n_k / eta)`` of the ``n_k`` results of that rung, ranked by non-dominated
  sorting over (score up, judged latency down) as MO-ASHA does (Schmucker et al.,
  2021), and within a layer by crowding distance (NSGA-II's spread measure; MO-ASHA
  uses an epsilon-net to the same end), then by score. Latency is an objective and the
  ends of a layer come first, so promotions spread over the budget instead of
  gathering at its slow end, where the scores are highest.

Optuna's pruners do not support two objectives, so the rule is here, small. A free
worker takes the best pending promotion (highest rung first), else a new trial: no
worker waits for a rung to fill. Rung 0 is the trial's Optuna value; a rung k >= 1
result is a :class:`RungResult` stored as a study user attribute ``rung/<trial>/<k>``
(one key per result, written once: optuna-dashboard shows it, a resume reads it, and
nothing is rewritten). The front (:func:`rung_front`) compares two architectures at
the highest rung both reached, so scores of different budgets are never compared.

Example:

>>> spec = FidelitySpec(kind="halving", eta=3)
>>> spec.schedule(0.25)   # rung epochs: 0.25, 0.75, then the verification budget
(0.25, 0.75, 2.5)
>>> entries = [RungEntry(n, latency, {0: score}) for n, latency, score in
...            [(0, 1.0, 0.30), (1, 2.0, 0.50), (2, 3.0, 0.40), (3, 4.0, 0.60), (4, 4.5, 0.20), (5, 5.0, 0.55)]]
>>> promotions(entries, eta=3, top_rung=2)   # 6 results at rung 0: 2 go on, the ends of the first layer
[(3, 1), (0, 1)]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mvit_nas.validate import check_choice, check_int, check_keys, check_number

KINDS = ("single", "halving")
DEFAULT_ETA = 3
VERIFY_FACTOR = 10  # the default last rung: this many times the proxy's epochs (the verification budget)
RUNG_ATTR_PREFIX = "rung/"


@dataclass(frozen=True)
class FidelitySpec:
    """How much training each architecture gets: one budget (``single``) or successive halving.

    ``max_epochs`` is the last rung's budget (None: :data:`VERIFY_FACTOR` x the proxy's epochs).

    >>> FidelitySpec.from_dict(FidelitySpec("halving", eta=2).to_dict()) == FidelitySpec("halving", eta=2)
    True
    """

    kind: str = "single"
    eta: int = DEFAULT_ETA
    max_epochs: float | None = None

    def __post_init__(self) -> None:
        check_choice("--fidelity", self.kind, KINDS)
        check_int("--eta", self.eta, 2, 100)
        if self.max_epochs is not None:
            check_number("--max-budget-epochs", self.max_epochs, 0.0, open_low=True)

    def schedule(self, base_epochs: float) -> tuple[float, ...]:
        """The training epochs of each rung; one rung (the proxy) for ``single``.

        Rung k trains ``base x eta^k`` epochs while that stays below the last rung's
        budget; the last rung trains exactly ``max_epochs``.
        """
        if self.kind == "single":
            return (base_epochs,)
        top = VERIFY_FACTOR * base_epochs if self.max_epochs is None else self.max_epochs
        if top <= base_epochs:
            return (base_epochs,)
        # The 1e-9 keeps 0.25 x 3^2 = 2.25 from reading as just over a 2.25 epochs top.
        rungs = math.floor(math.log(top / base_epochs, self.eta) + 1e-9)
        return (*(base_epochs * self.eta**k for k in range(rungs)), top)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FidelitySpec:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**check_keys("fidelity", data, names, prefix="fidelity."))


@dataclass(frozen=True)
class RungResult:
    """One architecture trained at one rung k >= 1: its score (top-1 on the held-out split), budget and cost.

    ``score`` is None when the training failed (``failure`` says why); a failed rung is
    recorded like any other, so a resume does not train it again, and the
    architecture is not promoted further.

    >>> result = RungResult(trial=7, rung=1, epochs=0.75, score=0.41, seconds=12.5, resolution=64)
    >>> RungResult.from_dict(result.to_dict()) == result, result.key
    (True, 'rung/00007/1')
    """

    trial: int
    rung: int
    epochs: float
    score: float | None
    seconds: float
    resolution: int | None = None
    failure: str | None = None
    node: str | None = None

    @property
    def key(self) -> str:
        """The study user attribute that holds this result."""
        return rung_key(self.trial, self.rung)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RungResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def rung_key(trial: int, rung: int) -> str:
    return f"{RUNG_ATTR_PREFIX}{trial:05d}/{rung}"


def read_rungs(study_attrs: Mapping[str, Any]) -> dict[tuple[int, int], RungResult]:
    """Every recorded rung k >= 1 result of a study (its ``user_attrs``), by (trial, rung)."""
    results = (RungResult.from_dict(value) for key, value in study_attrs.items() if key.startswith(RUNG_ATTR_PREFIX))
    return {(result.trial, result.rung): result for result in results}


@dataclass(frozen=True)
class RungEntry:
    """An architecture as the promotion rule sees it: its trial, judged latency, and score at each rung it reached."""

    trial: int
    latency_ms: float
    scores: dict[int, float] = field(default_factory=dict)

    @property
    def top(self) -> int:
        """The highest rung this architecture has a score at."""
        return max(self.scores)


def pareto_layers(points: Mapping[int, tuple[float, float]]) -> dict[int, int]:
    """Non-dominated sorting of (score up, latency down): 0 for the first front, 1 for the next, ..."""
    layers: dict[int, int] = {}
    rest = dict(points)
    layer = 0
    while rest:
        first = [
            key
            for key, (score, latency) in rest.items()
            if not any(
                other[0] >= score and other[1] <= latency and other != (score, latency) for other in rest.values()
            )
        ]
        for key in first:
            layers[key] = layer
            del rest[key]
        layer += 1
    return layers


def crowding(points: Mapping[int, tuple[float, float]]) -> dict[int, float]:
    """NSGA-II's crowding distance within one layer: the ends get infinity, the rest the normalised gap around them."""
    distance = dict.fromkeys(points, 0.0)
    for axis in (0, 1):
        order = sorted(points, key=lambda key: (points[key][axis], key))
        span = points[order[-1]][axis] - points[order[0]][axis]
        distance[order[0]] = distance[order[-1]] = math.inf
        for before, key, after in zip(order, order[1:], order[2:], strict=False):
            if span > 0:
                distance[key] += (points[after][axis] - points[before][axis]) / span
    return distance


def ranked(entries: Iterable[RungEntry], rung: int) -> list[int]:
    """The trials with a score at ``rung``, best first: by Pareto layer, crowding distance, score, then trial."""
    at_rung = {e.trial: (e.scores[rung], e.latency_ms) for e in entries if rung in e.scores}
    layers = pareto_layers(at_rung)
    spread: dict[int, float] = {}
    for layer in set(layers.values()):
        spread.update(crowding({n: at_rung[n] for n in at_rung if layers[n] == layer}))
    return sorted(at_rung, key=lambda n: (layers[n], -spread[n], -at_rung[n][0], n))


def promotions(
    entries: Iterable[RungEntry], eta: int, top_rung: int, taken: Iterable[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """The promotions due now, as (trial, next rung), the one to run first first.

    Rung k's promotable set is its best ``floor(n_k / eta)`` results (:func:`ranked`);
    a member that has no result at k + 1 and is not in ``taken`` (running now) is due.
    Higher rungs come first (ASHA: finish what is closest to the front), and within a
    rung the better-ranked. As more results land at a rung, its promotable set grows.
    """
    entries = list(entries)
    busy = set(taken)
    due: list[tuple[int, int]] = []
    for rung in range(top_rung - 1, -1, -1):
        order = ranked(entries, rung)
        reached = {e.trial for e in entries if rung + 1 in e.scores}
        for trial in order[: len(order) // eta]:
            if trial not in reached and (trial, rung + 1) not in busy:
                due.append((trial, rung + 1))
    return due


def rung_front(entries: Iterable[RungEntry]) -> list[int]:
    """The architectures no other dominates, comparing each pair at the highest rung both reached; fastest first.

    ``a`` dominates ``b`` when, at rung ``min(a.top, b.top)``, ``a`` scores at least as
    high and is at least as fast, and is better in one. Every architecture has rung 0,
    so any two compare; a score is never compared with one of another budget.
    """
    entries = list(entries)

    def dominates(a: RungEntry, b: RungEntry) -> bool:
        rung = min(a.top, b.top)
        sa, sb = a.scores[rung], b.scores[rung]
        return sa >= sb and a.latency_ms <= b.latency_ms and (sa > sb or a.latency_ms < b.latency_ms)

    kept = [b for b in entries if not any(dominates(a, b) for a in entries if a is not b)]
    return [e.trial for e in sorted(kept, key=lambda e: (e.latency_ms, e.trial))]
