"""Fixtures for every test, and one global setting: a single torch thread.

Helpers to import live in plain modules (``random_configs``, ``reliability/reliability_helpers``):
``tests/reliability`` has a conftest of its own, so ``import conftest`` would be ambiguous.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
from helpers import RANDOM_SEED, random_config

from mvit_nas.config import ArchConfig

# One thread: the machine is shared and small models gain nothing from more.
torch.set_num_threads(1)


@pytest.fixture
def rng() -> random.Random:
    """A fresh generator with the suite's fixed seed."""
    return random.Random(RANDOM_SEED)


@pytest.fixture
def make_config() -> Callable[[random.Random], ArchConfig]:
    """The :func:`random_config` generator, for tests that prefer a fixture."""
    return random_config
