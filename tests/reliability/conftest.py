"""Fixtures every reliability module shares: the one generated dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import shared_data


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_data(tmp_path_factory)
