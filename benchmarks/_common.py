"""Shared by every benchmark: where results go and the facts each result carries."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def machine() -> dict[str, Any]:
    """Machine, device and library versions, recorded with every result."""
    import optuna

    from mvit_nas.predictor import machine_info

    info = machine_info()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{key: info[key] for key in ("platform", "cpu", "cpu_count", "cuda")},
        "python": platform.python_version(),
        "versions": {**info["versions"], "optuna": optuna.__version__},
        "load_average_at_write": info["load_average"],
    }


def git_commit() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (a dirty tree is not that commit)."""
    repo = RESULTS_DIR.parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--", "mvit_nas"))}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/benchmarks/NAME.json`` with the machine facts added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "git": git_commit(), "machine": machine(), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
