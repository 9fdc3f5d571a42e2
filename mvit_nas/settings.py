"""What a search is asked to do: :class:`SearchSettings` (fixed for a run folder) and :class:`RunOptions` (free).

:class:`SearchSettings` is everything that determines a search's results (budget,
space, latency spec, proxy, dataset, sampler, seed); it is written to the run
folder's ``run.yaml`` at the start and a resume must ask for the same.
:class:`RunOptions` is how long and on what the search runs (trials, timeouts,
workers, Ray address), which may change from one invocation to the next. Both are
validated on creation and name the CLI flag of a bad value. The defaults here are
the CLI's defaults.

Example:

>>> settings = SearchSettings(budget_ms=5.0)
>>> SearchSettings.from_dict(settings.to_dict()) == settings
True
>>> RunOptions().trials
24
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import optuna

from mvit_nas.config import read_mapping
from mvit_nas.data import DatasetSpec, ProxyData, load_dataset, native_resolution, parse_dataset_spec
from mvit_nas.fidelity import FidelitySpec
from mvit_nas.latency import LatencySpec, resolve_spec
from mvit_nas.proxy import ProxySpec
from mvit_nas.space import SearchSpace, load_space, parse_space
from mvit_nas.validate import InputError, check_choice, check_int, check_keys, check_number

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=20),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
LATENCY_SOURCES = ("measured", "predicted")  # measured per trial, or predicted from the device's latency table
EXECUTORS = ("ray", "local")  # Ray tasks, or in-process one at a time (tests, benchmarks, no Ray)
DEFAULT_TRIALS = 24
# A search's latency threads: one. Its workers share the cores with each other's training, and a
# second thread at batch 1 buys little (MobileViT-XS 160 px: 8.9 ms at 1 thread, 8.5 ms at 2, idle)
# while it makes a measurement hostage to the other core (benchmarks/latency_repeatability.py).
SEARCH_THREADS = 1
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class SearchSettings:
    """Everything that determines a search's results; fixed for the life of a run folder."""

    budget_ms: float
    space: dict[str, Any] | None = None  # the space file's content; None = the bundled default
    latency: LatencySpec = field(default_factory=lambda: LatencySpec(threads=SEARCH_THREADS))
    proxy: ProxySpec = field(default_factory=ProxySpec)
    dataset: str = "synthetic"
    sampler: str = "tpe"
    seed: int = 0
    latency_source: str = "measured"
    fidelity: FidelitySpec = field(default_factory=FidelitySpec)

    def __post_init__(self) -> None:
        check_choice("--latency", self.latency_source, LATENCY_SOURCES)
        check_number("--budget-ms", self.budget_ms, 0.0, open_low=True, unit=" of milliseconds")
        check_choice("--sampler", self.sampler, SAMPLERS)

    @classmethod
    def create(
        cls,
        budget_ms: float,
        *,
        space_file: str | Path | None = None,
        device: str = "auto",
        backend: str = "auto",
        threads: int | None = None,
        proxy: str = "train",
        epochs: float | None = None,
        proxy_scale: float | None = ProxySpec.scale,
        here: bool = True,
        **fields: Any,
    ) -> SearchSettings:
        """Settings from user choices (``auto`` allowed, a space file's path), as ``mvit-nas search`` takes them.

        Latency is measured at ``threads`` CPU threads, :data:`SEARCH_THREADS` unless given.
        The proxy trains on the device latency is measured on. ``here=False``: the trials run
        on a cluster's workers, so this machine need not have the device. ``fields`` are the
        other fields (``dataset``, ``sampler``, ``seed``, ``latency_source``, ``fidelity``).
        """
        threads = SEARCH_THREADS if threads is None else threads
        latency = resolve_spec(device=device, backend=backend, threads=threads, here=here)
        proxy_spec = ProxySpec(kind=proxy, seed=fields.get("seed", 0), device=latency.device, scale=proxy_scale)
        if epochs is not None:
            proxy_spec = dataclasses.replace(proxy_spec, epochs=epochs)
        space = read_mapping(space_file, "--space") if space_file else None
        return cls(budget_ms=budget_ms, space=space, latency=latency, proxy=proxy_spec, **fields)

    def make_sampler(self, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
        """The run's sampler, for a study that already holds ``resumed_at`` trials.

        Seeded from the run's seed and that count: a resumed run draws new random numbers
        (a sampler re-seeded as at the start would re-propose the configs it already
        evaluated, TPE's random start-up phase most of all), and the same run resumed at
        the same point draws the same ones.
        """
        seed = int(numpy.random.SeedSequence([self.seed, resumed_at]).generate_state(1)[0])
        return SAMPLERS[self.sampler](seed if resumed_at else self.seed)

    def search_space(self) -> SearchSpace:
        return load_space() if self.space is None else parse_space(self.space)

    def dataset_spec(self) -> DatasetSpec:
        return parse_dataset_spec(self.dataset)

    def load_data(self, cache_dir: Path | None = None) -> ProxyData:
        """The run's dataset, loaded once at the size every proxy input is resampled from.

        A fixed-resolution proxy loads at its resolution; a scaled one at the dataset's
        own size (CIFAR's 32 px, the generated 64 px), or for an image folder at the
        largest input the space asks for. ``cache_dir`` is as for
        :func:`~mvit_nas.data.load_dataset`.
        """
        spec = self.dataset_spec()
        if self.proxy.scale is None:
            resolution = self.proxy.resolution
        else:
            largest = self.proxy.input_size(max(self.search_space().choices["resolution"]))
            resolution = native_resolution(spec) or largest
        return load_dataset(spec, resolution, cache_dir=cache_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``run.yaml`` (and sent to workers)."""
        nested = {"latency": self.latency.to_dict(), "proxy": self.proxy.to_dict(), "fidelity": self.fidelity.to_dict()}
        return {**dataclasses.asdict(self), **nested}

    @classmethod
    def from_dict(cls, data: Any) -> SearchSettings:
        names = [f.name for f in dataclasses.fields(cls)]
        data = dict(check_keys("settings", data, names, ("budget_ms",)))
        if "latency" in data:
            data["latency"] = LatencySpec.from_dict(data["latency"])
        if "proxy" in data:
            data["proxy"] = ProxySpec.from_dict(data["proxy"])
        if "fidelity" in data:
            data["fidelity"] = FidelitySpec.from_dict(data["fidelity"])
        return cls(**data)

    def rung_epochs(self) -> tuple[float, ...]:
        """The training epochs of each rung (rung 0 is the proxy; one rung unless the run halves)."""
        return self.fidelity.schedule(self.proxy.epochs)


@dataclass(frozen=True)
class RunOptions:
    """How long and on what a search runs; unlike :class:`SearchSettings`, free to change on resume.

    ``trial_timeout`` counts from a trial's submission (a worker's start and Ray's retry included).
    ``verify_epochs``: after the search, :func:`mvit_nas.verify.verify_run` trains the front and the
    fitted seeds this many epochs (``run_search`` only; None: no verification).
    """

    trials: int = DEFAULT_TRIALS
    timeout: float | None = None
    workers: int = DEFAULT_WORKERS
    address: str | None = None
    executor: str = "ray"
    trial_timeout: float | None = None
    gpus_per_trial: float = 1.0  # on --device cuda: each trial's share of a GPU (0.5: two trials per GPU)
    verify_epochs: float | None = None

    def __post_init__(self) -> None:
        check_int("--trials", self.trials, 1)
        check_int("--workers", self.workers, 1)
        check_number("--gpus-per-trial", self.gpus_per_trial, 0.0, 64.0, open_low=True)
        for flag, value in (("--timeout", self.timeout), ("--trial-timeout", self.trial_timeout)):
            if value is not None:
                check_number(flag, value, 0.0, open_low=True, unit=" of seconds")
        if self.verify_epochs is not None:
            check_number("--verify-epochs", self.verify_epochs, 0.0, open_low=True)
        check_choice("executor", self.executor, EXECUTORS)
        if self.executor == "local" and self.trial_timeout is not None:
            raise InputError("--trial-timeout", "needs the Ray executor: in-process trials cannot be stopped")
