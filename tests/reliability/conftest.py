"""Fixtures every reliability module shares: the one generated dataset, and a clean dataset cache."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import shared_data


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_data(tmp_path_factory)


@pytest.fixture(autouse=True)
def _free_cached_datasets() -> Iterator[None]:
    yield
    # In-process searches keep their dataset otherwise. importlib: the attribute mvit_nas.search is the function.
    importlib.import_module("mvit_nas.search")._dataset.cache_clear()
