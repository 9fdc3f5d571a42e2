"""Shared by every benchmark: where results go and the facts each result carries."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def machine() -> dict[str, Any]:
    """Machine, device and library versions, recorded with every result."""
    import onnxruntime
    import optuna
    import torch

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "optuna": optuna.__version__},
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/benchmarks/NAME.json`` with the machine facts added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n")
    return path
