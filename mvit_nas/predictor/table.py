"""The latency table: measured blocks, fitted coefficients and correction for one spec, as one JSON file.

A :class:`LatencyTable` turns an :class:`~mvit_nas.config.ArchConfig` into a
predicted latency without building anything, for the device, backend, thread
count, batch size and dtype of its :class:`~mvit_nas.latency.LatencySpec`; it
is read back checked against the spec it is asked to predict for, and written
atomically. Its default place is :func:`default_table_path`.

Example:

>>> from mvit_nas.latency import LatencySpec
>>> default_table_path(LatencySpec(threads=2)).as_posix()
'results/latency_tables/cpu-onnxruntime-2t.json'
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvit_nas.atomic import write_text
from mvit_nas.config import ArchConfig, Block
from mvit_nas.latency import LatencySpec, cpu_name
from mvit_nas.predictor.features import FEATURES, KINDS, block_features, decompose
from mvit_nas.predictor.fit import Correction
from mvit_nas.validate import InputError

# 2: the whole-network correction is fitted to judged latencies (1 fitted it to raw medians, about 5% low).
TABLE_FORMAT = 2
TABLES_DIR = Path("results") / "latency_tables"
# Spec fields a latency depends on (timing settings only change how precisely it is known).
_SPEC_FLAGS = {
    "device": "--device",
    "backend": "--backend",
    "threads": "--threads",
    "batch_size": "--batch-size",
    "dtype": "--dtype",
}


def describe_spec(spec: LatencySpec) -> str:
    """What a table is for, in words: ``cpu/onnxruntime/2 threads/batch 1`` (and the dtype if not float32)."""
    text = f"{spec.device}/{spec.backend}/{spec.threads} threads/batch {spec.batch_size}"
    return text if spec.dtype == "float32" else f"{text}/{spec.dtype}"


def _build_command(spec: LatencySpec) -> str:
    command = f"mvit-nas latency-table build --device {spec.device} --backend {spec.backend} --threads {spec.threads}"
    return command if spec.batch_size == 1 else f"{command} --batch-size {spec.batch_size}"


def default_table_path(spec: LatencySpec) -> Path:
    """``results/latency_tables/<device>-<backend>-<threads>t.json`` (relative to the working directory).

    A batch size other than 1 and a dtype other than float32 add ``-b<N>`` / ``-<dtype>``.

    >>> from mvit_nas.latency import LatencySpec
    >>> default_table_path(LatencySpec(backend="eager", threads=1, batch_size=8)).name
    'cpu-eager-1t-b8.json'
    """
    name = f"{spec.device}-{spec.backend}-{spec.threads}t"
    if spec.batch_size != 1:
        name += f"-b{spec.batch_size}"
    if spec.dtype != "float32":
        name += f"-{spec.dtype}"
    return TABLES_DIR / f"{name}.json"


def machine_info() -> dict[str, Any]:
    """The machine a table was measured on (a table predicts for that machine only)."""
    import onnxruntime

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        # Other work on the machine while measuring makes a table slow and noisy; this says whether there was any.
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _feature_names() -> dict[str, list[str]]:
    return {kind: list(names) for kind, names in FEATURES.items()}


@dataclass(frozen=True)
class LatencyTable:
    """Measured blocks, fitted per-kind coefficients and the whole-network correction for one spec.

    ``spec``'s device, backend, threads, batch size and dtype are what the table
    predicts for; its height/width do not matter (each config is predicted at its
    own resolution). Everything is plain JSON data, so ``load(save(t)) == t``.

    Example::

        table = LatencyTable.load("results/latency_tables/cpu-onnxruntime-2t.json", spec)
        table.predict(preset("xs"))                    # e.g. 11.8 (ms)
        table.predict_many([preset("xxs"), preset("s")])
    """

    spec: LatencySpec
    coefficients: dict[str, list[float]]  # kind -> weights of FEATURES[kind]
    correction: dict[str, Any]  # {"form", "log_scale", "exponent", "kind_weights": {kind: w}}
    blocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> [{"kind", shape..., "ms"}]
    calibration: list[dict[str, Any]] = field(default_factory=list)  # [{"config", "block_sum_ms", "measured_ms"}]
    # The reference latencies (ms, by name) the calibration configs were judged against; empty: raw medians (older).
    judged_against: dict[str, float] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)  # error summaries, for the record
    space: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    build_seconds: float = 0.0
    block_timing: dict[str, Any] = field(default_factory=dict)

    # --- prediction --------------------------------------------------------------------

    def block_latencies(self, cfg: ArchConfig) -> list[tuple[Block, float]]:
        """Each block of ``cfg`` (at ``cfg.resolution``) with its predicted ms, before the whole-network correction.

        Example::

            for block, ms in table.block_latencies(preset("xxs")):
                print(block, f"{ms:.3f} ms")
        """
        batch = self.spec.batch_size
        return [
            (block, float(np.dot(block_features(block, batch), self.coefficients[block.kind])))
            for block in decompose(cfg)
        ]

    def kind_sums(self, cfgs: Iterable[ArchConfig]) -> np.ndarray:
        """(configs, kinds) matrix of predicted block ms summed per kind (one matrix product per kind)."""
        batch = self.spec.batch_size
        owners: dict[str, list[int]] = {kind: [] for kind in KINDS}
        rows: dict[str, list[list[float]]] = {kind: [] for kind in KINDS}
        count = 0
        for index, cfg in enumerate(cfgs):
            count += 1
            for block in decompose(cfg):
                owners[block.kind].append(index)
                rows[block.kind].append(block_features(block, batch))
        sums = np.zeros((count, len(KINDS)))
        for column, kind in enumerate(KINDS):
            if rows[kind]:
                np.add.at(sums[:, column], owners[kind], np.asarray(rows[kind]) @ np.asarray(self.coefficients[kind]))
        return sums

    def _correction(self) -> Correction:
        c = self.correction
        weights = tuple(float(c["kind_weights"][kind]) for kind in KINDS)
        return Correction(c["form"], float(c["log_scale"]), float(c["exponent"]), weights)

    def predict(self, cfg: ArchConfig) -> float:
        """Predicted latency (ms) of ``build_model(cfg)`` at ``cfg.resolution``, batch ``spec.batch_size``.

        Example::

            table.predict(preset("xxs"))  # e.g. 6.4
        """
        return self.predict_many([cfg])[0]

    def predict_many(self, cfgs: Iterable[ArchConfig]) -> list[float]:
        """:meth:`predict` for each config, vectorised.

        Example::

            table.predict_many(space.decode(p) for p in params)  # [3.1, 7.9, ...]
        """
        sums = self.kind_sums(cfgs)
        return [float(value) for value in self._correction().apply(sums)] if len(sums) else []

    # --- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_dict()
        data["features"] = _feature_names()
        return {"format": TABLE_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency table") -> LatencyTable:
        """The table ``data`` holds; :class:`InputError` (``--latency``) saying to rebuild it if it is not one."""
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise InputError("--latency", f"{where} has format {found!r}, expected {TABLE_FORMAT}; rebuild it")
        if data.get("features") != _feature_names():
            raise InputError("--latency", f"{where} was fitted on other features (older mvit-nas); rebuild it")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            fields = {key: value for key, value in data.items() if key in names}
            fields["spec"] = LatencySpec.from_dict(fields["spec"])
            table = cls(**fields)
        except (KeyError, TypeError) as error:
            raise InputError("--latency", f"{where} is incomplete or malformed ({error}); rebuild it") from None
        correction = table.correction
        for kind in KINDS:
            if len(table.coefficients.get(kind, ())) != len(FEATURES[kind]):
                raise InputError("--latency", f"{where} lacks coefficients for {kind!r} blocks; rebuild it")
            if not isinstance(correction, dict) or kind not in correction.get("kind_weights", {}):
                raise InputError("--latency", f"{where} lacks the whole-network correction; rebuild it")
        if not all(key in correction for key in ("form", "log_scale", "exponent")):
            raise InputError("--latency", f"{where} lacks the whole-network correction; rebuild it")
        return table

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically: a reader never sees half a file).

        Example::

            table.save(default_table_path(table.spec))
        """
        return write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, spec: LatencySpec | None = None) -> LatencyTable:
        """Read a table; with ``spec``, raise :class:`InputError` naming the flag it was not measured under.

        Example::

            table = LatencyTable.load("cpu-onnxruntime-2t.json", resolve_spec(threads=2))
        """
        path = Path(path)
        if not path.is_file():
            what = f"for {describe_spec(spec)} " if spec is not None else ""
            command = _build_command(spec) if spec is not None else "mvit-nas latency-table build ..."
            raise InputError("--latency", f"no latency table {what}at {str(path)!r}; build one with `{command}`")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError("--latency", f"{str(path)!r} is not a latency table (invalid JSON: {error})") from None
        table = cls.from_dict(data, where=repr(str(path)))
        if spec is not None:
            table.check_spec(spec)
        return table

    def check_spec(self, spec: LatencySpec) -> None:
        """Raise :class:`InputError` naming the flag if ``spec`` asks for what this table did not measure."""
        for name, flag in _SPEC_FLAGS.items():
            ours, asked = getattr(self.spec, name), getattr(spec, name)
            if ours != asked:
                raise InputError(
                    flag,
                    f"the latency table was measured with {flag} {ours}, but {asked} was asked; "
                    f"build one with `{_build_command(spec)}`",
                )


def load_table(spec: LatencySpec, path: str | Path | None = None) -> LatencyTable:
    """The table for ``spec`` (from ``path``, default :func:`default_table_path`), checked against ``spec``.

    Example::

        table = load_table(resolve_spec(device="cpu", backend="onnxruntime"))
    """
    return LatencyTable.load(default_table_path(spec) if path is None else path, spec)


def calibration_configs(table: LatencyTable) -> list[ArchConfig]:
    """The whole configs ``table``'s correction was fitted on (to keep them out of an evaluation)."""
    return [ArchConfig.from_dict(entry["config"]) for entry in table.calibration]
