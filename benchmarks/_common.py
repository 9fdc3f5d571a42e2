"""Shared by every benchmark: where results go, the facts each carries, the records a long run resumes from."""

from __future__ import annotations

import datetime
import json
import os
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

    dirty = git("status", "--porcelain", "--", "mvit_nas", "benchmarks")  # the code measured, and the measuring
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(dirty)}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/benchmarks/NAME.json`` with the machine facts added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "git": git_commit(), "machine": machine(), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Add one finished piece of a long benchmark to ``path`` (JSON lines), on disk before this returns.

    A run stopped at any point keeps every record written; the same command continues
    with what :func:`read_records` does not hold.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # After a kill mid-write the file ends in a cut line: start a new one, or this record would join it and be lost.
    cut = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as file:
        file.write(("\n" if cut else "") + json.dumps(record) + "\n")
        file.flush()
        os.fsync(file.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record :func:`append_record` wrote to ``path``, in order; none if it does not exist.

    A line cut short by a kill mid-write is left out (that piece runs again).
    """
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
