"""Fixtures every reliability module shares: the one generated dataset, and a clean dataset cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import shared_data

import mvit_nas.search as search_module


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_data(tmp_path_factory)


@pytest.fixture(autouse=True)
def _free_cached_datasets() -> Iterator[None]:
    yield
    search_module._dataset.cache_clear()  # in-process searches keep their dataset otherwise
