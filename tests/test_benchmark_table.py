"""The benchmark table says which results still describe the code (``benchmarks/make_table.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.make_table import MEASURES, _benchmark_of, code_of, freshness, render

REPO = Path(__file__).resolve().parents[1]


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def test_a_result_of_the_current_commit_is_current() -> None:
    assert freshness("cost", {"git": {"commit": _head(), "dirty": False}}).endswith(": current")


def test_a_result_without_a_commit_is_flagged() -> None:
    assert "stale?" in freshness("cost", {"machine": {}})


def test_a_result_measured_before_its_code_changed_is_stale() -> None:
    # 62eab0c predates the layout walker: cost.py, config.py and model.py all changed since.
    verdict = freshness("cost", {"git": {"commit": "62eab0c", "dirty": False}})
    assert "**stale**" in verdict and "mvit_nas/cost.py" in verdict, verdict


def test_a_partial_result_says_it_is_not_finished_rather_than_falling_short() -> None:
    partial = {"goal": "g", "passed": False, "partial": True, "machine": {"date": "2026-12-02"}}
    row = next(line for line in render({"long_benchmark": partial}).splitlines() if "long_benchmark" in line)
    assert "not finished (partial result)" in row and "falls short" not in row


def test_a_docstring_or_comment_edit_leaves_a_result_current_and_a_code_edit_does_not() -> None:
    before = 'def f(x):\n    """Says one thing."""\n    return x + 1\n'
    reworded = 'def f(x):\n    """Says it better."""\n    # why: the comment is new too\n    return x + 1\n'
    changed = 'def f(x):\n    """Says one thing."""\n    return x + 2\n'
    assert code_of(before) == code_of(reworded)
    assert code_of(before) != code_of(changed)


def test_a_variant_result_is_judged_by_the_code_its_benchmark_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    # 62eab0c predates changes to cost.py and to much else: only what "cost" measures is asked about.
    monkeypatch.setitem(MEASURES, "cost", ("mvit_nas/cost.py",))
    verdict = freshness("cost_variant", {"git": {"commit": "62eab0c", "dirty": False}})
    assert verdict.endswith("**stale**, mvit_nas/cost.py changed since"), verdict
    assert _benchmark_of("proxy_fidelity_real", MEASURES) == "proxy_fidelity_real"  # the longest name wins
    assert _benchmark_of("proxy_fidelity_lr3e-3", MEASURES) == "proxy_fidelity"
