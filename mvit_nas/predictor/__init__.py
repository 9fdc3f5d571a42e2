"""Per-device latency predictor: a table of measured building blocks and fitted cost models.

Measuring a model takes seconds (export, warm-up, timing); a search proposes
thousands. A :class:`LatencyTable` turns an :class:`~mvit_nas.config.ArchConfig`
into a latency in milliseconds, without building anything, for one device,
backend, thread count, batch size and dtype (one
:class:`~mvit_nas.latency.LatencySpec`).

- :mod:`~mvit_nas.predictor.features`: the blocks of a config
  (:func:`decompose`, the layout's records) and their cost features;
- :mod:`~mvit_nas.predictor.build`: :func:`build_table` samples block shapes
  and calibration configs of a search space, times them with
  :mod:`mvit_nas.latency`'s one timing loop, and fits;
- :mod:`~mvit_nas.predictor.fit`: relative non-negative least squares per block
  kind, the whole-network correction, error summaries;
- :mod:`~mvit_nas.predictor.table`: :class:`LatencyTable` (predict, save, load,
  checked against a spec), by default at
  ``results/latency_tables/<device>-<backend>-<threads>t.json``.

Example::

    spec = resolve_spec(device="cpu", backend="onnxruntime")
    table = build_table(spec, load_space())         # ~10 minutes on a 2-core CPU
    table.save(default_table_path(spec))
    table = load_table(spec)                         # later, or in another process
    table.predict(preset("xxs"))                     # ms, at the config's resolution
"""

from mvit_nas.predictor.build import (
    BLOCK_TIMING,
    DEFAULT_BLOCKS,
    DEFAULT_WHOLE_CONFIGS,
    block_module,
    build_table,
    extreme_configs,
    random_space_configs,
    sample_block_shapes,
    time_block,
)
from mvit_nas.predictor.features import (
    FEATURES,
    KINDS,
    BlockShape,
    block_features,
    block_from_dict,
    block_input_shape,
    block_to_dict,
    decompose,
)
from mvit_nas.predictor.table import (
    TABLE_FORMAT,
    TABLES_DIR,
    LatencyTable,
    calibration_configs,
    default_table_path,
    describe_spec,
    load_table,
    machine_info,
)

__all__ = [
    "BLOCK_TIMING",
    "DEFAULT_BLOCKS",
    "DEFAULT_WHOLE_CONFIGS",
    "FEATURES",
    "KINDS",
    "TABLES_DIR",
    "TABLE_FORMAT",
    "BlockShape",
    "LatencyTable",
    "block_features",
    "block_from_dict",
    "block_input_shape",
    "block_module",
    "block_to_dict",
    "build_table",
    "calibration_configs",
    "decompose",
    "default_table_path",
    "describe_spec",
    "extreme_configs",
    "load_table",
    "machine_info",
    "random_space_configs",
    "sample_block_shapes",
    "time_block",
]
