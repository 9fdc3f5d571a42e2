"""mvit-nas: hardware-aware architecture search for MobileViT.

The public API, one entry point per stage of the data flow: architecture records
(:class:`ArchConfig`, :func:`preset`, :func:`layout`), the model
(:func:`build_model`), its cost (:func:`count_cost`), its latency
(:func:`measure`, :func:`profile`), the search (:func:`search`,
:func:`run_search`), its verification (:func:`verify_run`) and the exports
(:func:`export_run`).

Example:

>>> from mvit_nas import build_model, count_cost, preset
>>> cfg = preset("xxs")
>>> count_cost(cfg).params == sum(p.numel() for p in build_model(cfg).parameters())
True
"""

from mvit_nas.config import (
    ArchConfig,
    MobileViTStageConfig,
    MV2StageConfig,
    layout,
    load_config,
    preset,
)
from mvit_nas.cost import count_cost
from mvit_nas.latency import LatencySpec, measure, measure_config, resolve_spec
from mvit_nas.model import build_model, from_timm, to_timm
from mvit_nas.pipeline import run_search
from mvit_nas.profiler import ProfileReport, profile
from mvit_nas.report import export_run, front
from mvit_nas.run import TrialRecord
from mvit_nas.search import search
from mvit_nas.settings import RunOptions, SearchSettings
from mvit_nas.space import SearchSpace, load_space
from mvit_nas.validate import InputError
from mvit_nas.verify import verify_run

__all__ = [
    "ArchConfig",
    "InputError",
    "LatencySpec",
    "MV2StageConfig",
    "MobileViTStageConfig",
    "ProfileReport",
    "RunOptions",
    "SearchSettings",
    "SearchSpace",
    "TrialRecord",
    "build_model",
    "count_cost",
    "export_run",
    "from_timm",
    "front",
    "layout",
    "load_config",
    "load_space",
    "measure",
    "measure_config",
    "preset",
    "profile",
    "resolve_spec",
    "run_search",
    "search",
    "to_timm",
    "verify_run",
]
