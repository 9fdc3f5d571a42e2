"""The latency predictor: block decomposition, table build, persistence, prediction sanity, spec checks.

A tiny space and very short timing settings keep the build to seconds; nothing
here asserts a timing threshold (the machine is shared), only behaviour.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PREDICTOR_SPACE

from mvit_nas.config import preset
from mvit_nas.cost import count_cost
from mvit_nas.latency import REFERENCES, Calibration, LatencySpec
from mvit_nas.predictor import (
    KINDS,
    LatencyTable,
    block_from_dict,
    block_module,
    block_to_dict,
    build,
    build_table,
    calibration_configs,
    decompose,
    default_table_path,
    extreme_configs,
    load_table,
    random_space_configs,
    sample_block_shapes,
)
from mvit_nas.space import SearchSpace, parse_space
from mvit_nas.validate import InputError

# As short as a measurement can be: this tests the machinery, not the numbers.
SHORT = {"warmup": 1, "min_repeats": 3, "min_seconds": 0.0, "max_repeats": 3}
SPEC = LatencySpec(device="cpu", backend="onnxruntime", threads=1, **SHORT)
BLOCKS = {"stem": 3, "mv2": 6, "mobilevit": 6, "head": 3}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return parse_space(PREDICTOR_SPACE)


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> LatencyTable:
    return build_table(SPEC, space, blocks=BLOCKS, whole_configs=3, block_timing=SHORT, progress=False)


@pytest.fixture(scope="module")
def saved(table: LatencyTable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return table.save(tmp_path_factory.mktemp("tables") / "table.json")


# --- decomposition ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xxs", "xs", "s"])
def test_blocks_rebuild_the_model(name: str) -> None:
    cfg = preset(name)
    blocks = decompose(cfg)
    params = sum(sum(p.numel() for p in block_module(block)[0].parameters()) for block in blocks)
    assert params == count_cost(cfg).params
    counts = {kind: sum(block.kind == kind for block in blocks) for kind in KINDS}
    assert counts == {"stem": 1, "mv2": cfg.layer1.num_blocks + cfg.layer2.num_blocks + 3, "mobilevit": 3, "head": 1}


def test_block_shape_dict_round_trip() -> None:
    for block in decompose(preset("xs")):
        assert block_from_dict(json.loads(json.dumps(block_to_dict(block)))) == block


def test_sampled_shapes_are_distinct_and_include_extremes(space: SearchSpace) -> None:
    shapes = sample_block_shapes(space, {"stem": 50, "mv2": 10, "mobilevit": 10, "head": 2}, seed=3)
    for chosen in shapes.values():
        assert len(set(chosen)) == len(chosen)
    assert len(shapes["mv2"]) == 10 and len(shapes["head"]) == 2
    assert len(shapes["stem"]) == 4  # 2 stem widths x 2 resolutions: all there are
    smallest, largest = extreme_configs(space)
    assert decompose(smallest)[0] in shapes["stem"] and decompose(largest)[0] in shapes["stem"]


# --- build, save, load -----------------------------------------------------------------


def test_table_holds_what_was_measured(table: LatencyTable, space: SearchSpace) -> None:
    assert table.spec == SPEC and table.space == "tiny"
    for kind in KINDS:
        assert len(table.blocks[kind]) == BLOCKS[kind]
        assert all(entry["ms"] > 0 for entry in table.blocks[kind])
    assert len(table.calibration) == 3
    assert all(space.contains(cfg) for cfg in calibration_configs(table))
    assert table.machine["cpu_count"] >= 1 and table.build_seconds > 0


def test_the_correction_is_fitted_to_latencies_judged_as_a_search_judges_them(
    space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    judged_against: list[dict[str, float]] = []

    def measure_judged(module: object, spec: LatencySpec, calibration: Calibration) -> SimpleNamespace:
        judged_against.append(calibration.reference_ms)
        return SimpleNamespace(judged_ms=float(len(judged_against)))  # 1, 2, 3 ms: nothing a raw timing gives

    monkeypatch.setattr(build, "measure_judged", measure_judged)
    tiny = {"stem": 1, "mv2": 1, "mobilevit": 1, "head": 1}
    table = build_table(SPEC, space, blocks=tiny, whole_configs=3, block_timing=SHORT, progress=False)
    assert [entry["measured_ms"] for entry in table.calibration] == [1.0, 2.0, 3.0]
    # One idle calibration for the whole build, recorded with the table.
    assert set(table.judged_against) == set(REFERENCES) and judged_against == [table.judged_against] * 3


def test_save_load_round_trip_is_exact(table: LatencyTable, saved: Path) -> None:
    loaded = LatencyTable.load(saved, SPEC)
    assert loaded == table
    configs = random_space_configs(parse_space(PREDICTOR_SPACE), 10, seed=0)
    assert loaded.predict_many(configs) == table.predict_many(configs)


def test_timing_settings_do_not_count_as_a_spec_mismatch(saved: Path) -> None:
    LatencyTable.load(saved, dataclasses.replace(SPEC, min_seconds=1.0, warmup=10, height=128, width=128))


# --- prediction -------------------------------------------------------------------------


def test_predictions_are_positive_finite_and_consistent(table: LatencyTable, space: SearchSpace) -> None:
    configs = [*random_space_configs(space, 20, seed=1), preset("xxs"), preset("s")]
    many = table.predict_many(configs)
    for cfg, value in zip(configs, many, strict=True):
        single = table.predict(cfg)
        assert math.isfinite(single) and single > 0
        assert value == pytest.approx(single, rel=1e-12)
    assert table.predict_many([]) == []


def test_bigger_configs_predict_higher(table: LatencyTable, space: SearchSpace) -> None:
    smallest, largest = extreme_configs(space)
    assert table.predict(largest) > table.predict(smallest)
    assert table.predict(dataclasses.replace(smallest, resolution=96)) >= table.predict(smallest)
    rng = random.Random(7)
    for cfg in random_space_configs(space, 10, seed=2):
        stage = rng.choice(("layer3", "layer4", "layer5"))
        deeper = dataclasses.replace(
            cfg, **{stage: dataclasses.replace(getattr(cfg, stage), transformer_blocks=3)}
        )  # 3 is outside the space: the predictor extrapolates, monotonically
        assert table.predict(deeper) >= table.predict(cfg)


def test_eager_backend_builds_too(space: SearchSpace) -> None:
    spec = dataclasses.replace(SPEC, backend="eager")
    tiny = {"stem": 2, "mv2": 3, "mobilevit": 3, "head": 2}
    eager = build_table(spec, space, blocks=tiny, whole_configs=2, block_timing=SHORT, progress=False, seed=1)
    assert eager.spec.backend == "eager"
    assert eager.predict(extreme_configs(space)[0]) > 0


def test_build_keeps_excluded_configs_out_of_the_calibration(space: SearchSpace) -> None:
    spec = dataclasses.replace(SPEC, backend="eager")
    tiny = {"stem": 1, "mv2": 1, "mobilevit": 1, "head": 1}
    settings = {"blocks": tiny, "whole_configs": 2, "block_timing": SHORT, "progress": False}
    first = calibration_configs(build_table(spec, space, **settings))
    second = calibration_configs(build_table(spec, space, **settings, exclude=first))
    assert len(second) == 2 and not set(first) & set(second)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"threads": 2}, "--threads"),
        ({"backend": "eager"}, "--backend"),
        ({"batch_size": 4}, "--batch-size"),
        ({"device": "cuda"}, "--device"),
    ],
)
def test_loading_under_another_spec_names_the_flag(saved: Path, change: dict, flag: str) -> None:
    with pytest.raises(InputError) as caught:
        LatencyTable.load(saved, dataclasses.replace(SPEC, **change))
    assert caught.value.field == flag
    assert "mvit-nas latency-table build" in caught.value.problem


def test_missing_table_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_table(SPEC, tmp_path / "absent.json")
    assert caught.value.field == "--latency"
    assert "no latency table for cpu/onnxruntime/1 threads" in caught.value.problem
    assert "mvit-nas latency-table build --device cpu --backend onnxruntime --threads 1" in caught.value.problem


def test_default_path_names_device_backend_threads() -> None:
    assert default_table_path(LatencySpec(threads=2)) == Path("results/latency_tables/cpu-onnxruntime-2t.json")
    assert default_table_path(LatencySpec(backend="eager", threads=1, batch_size=8)).name == "cpu-eager-1t-b8.json"


@pytest.mark.parametrize("text", ["not json", json.dumps({"format": 99}), json.dumps([1, 2])])
def test_a_file_that_is_not_a_table_is_bad_input(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        LatencyTable.load(path, SPEC)
    assert caught.value.field == "--latency"


def test_a_table_fitted_to_raw_medians_must_be_rebuilt(saved: Path, tmp_path: Path) -> None:
    # Format 1 fitted its correction to raw medians, which judged latencies exceed by about 5%: it would predict low.
    data = json.loads(saved.read_text())
    data["format"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="rebuild"):
        LatencyTable.load(path)


def test_a_table_with_missing_fields_is_bad_input(saved: Path, tmp_path: Path) -> None:
    data = json.loads(saved.read_text())
    del data["coefficients"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="rebuild"):
        LatencyTable.load(path)


def test_build_rejects_too_few_whole_configs(space: SearchSpace) -> None:
    with pytest.raises(InputError) as caught:
        build_table(SPEC, space, whole_configs=1, progress=False)
    assert caught.value.field == "whole_configs"
