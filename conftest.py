"""Names every docstring example in ``mvit_nas/`` may use, as a user would after ``from mvit_nas import *``.

The examples run under ``pytest --doctest-modules`` (part of the test command), so each
one is a tested, running example of its entry point.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _public_api(doctest_namespace: dict[str, Any]) -> None:
    import torch

    import mvit_nas

    doctest_namespace.update({name: getattr(mvit_nas, name) for name in mvit_nas.__all__})
    doctest_namespace["torch"] = torch
