"""The front re-measured at the end of a search: a point that no longer fits leaves the front, with its reason."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from helpers import tiny_settings

import mvit_nas.recheck as recheck
from mvit_nas.latency import Benchmark, Calibration, LatencySpec, LatencyStats, hardware_name, reference_spec
from mvit_nas.report import export_run, front
from mvit_nas.run import CALIBRATIONS_ATTR, FRONT_LATENCY_FILE, open_study
from mvit_nas.search import search


def test_a_front_point_over_budget_at_the_final_re_measurement_leaves_the_front_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 1000.0
    run_dir = tmp_path / "run"
    outcome = search(tiny_settings(budget), run_dir, trials=8, executor="local", workers=1)
    before = [t.number for t in outcome.front]
    assert len(before) >= 1
    doomed = before[0]
    measured: list[list[int]] = []

    def fake_interleave(
        candidates: Sequence[Benchmark], _references: object, calibration: Calibration, _seconds: float, _lock: object
    ) -> list[LatencyStats]:
        # Which trials were timed, in this call: the benchmarks come in the order of the points.
        numbers = [t.number for t in front(open_study(run_dir)) if t.number not in {n for c in measured for n in c}]
        measured.append(numbers)
        out = []
        for number, candidate in zip(numbers, candidates, strict=True):
            judged = 2 * budget if number == doomed else 1.0
            out.append(LatencyStats(judged, judged, judged, judged, 50, candidate.spec, None, reference_ms=1.0,
                                    ratio=judged, ratio_low=judged * 0.99, ratio_high=judged * 1.01))  # fmt: skip
        return out

    monkeypatch.setattr(recheck, "interleave", fake_interleave)

    def quiet(spec: LatencySpec, _lock: object) -> Calibration:  # as calibrate() records it, at 1 ms
        return Calibration({"xxs@128": 1.0}, reference_spec(spec), hardware_name(spec.device))

    monkeypatch.setattr(recheck, "calibrate", quiet)
    rows = recheck.check_front(run_dir)

    study = open_study(run_dir)
    after = [t.number for t in front(study)]
    assert doomed not in after
    reason = study.user_attrs["front_dropped"][str(doomed)]
    assert "over the 1000 ms budget" in reason and "2000.00 ms" in reason
    by_trial = {row.trial: row for row in rows}
    assert by_trial[doomed].dropped == reason and not by_trial[doomed].within_budget
    assert all(by_trial[n].within_budget for n in after)  # every point left on the front was re-measured and fits
    assert measured[0] == before  # all front points timed together first
    written = json.loads((run_dir / FRONT_LATENCY_FILE).read_text())
    assert {row["trial"] for row in written} == set(by_trial)

    out_dir = export_run(run_dir).out_dir
    assert f"- trial {doomed}: {reason}" in (out_dir / "summary.md").read_text()
    table = pd.read_csv(out_dir / "trials.csv")
    judged = table["latency_ratio"] * table["latency_reference_ms"]
    assert (table["latency_judged_ms"] - judged).abs().max() < 1e-9  # the raw median stays beside it
    assert (table["latency_ratio_low"] <= table["latency_ratio"]).all() and table["proxy_resolution"].notna().all()


@pytest.mark.parametrize("check_is_quieter", [False, True])
def test_the_front_check_judges_by_the_quietest_calibration_the_run_has_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_is_quieter: bool
) -> None:
    run_dir = tmp_path / "run"
    search(tiny_settings(1000.0), run_dir, trials=3, executor="local", workers=1)
    started = Calibration.from_dict(open_study(run_dir).user_attrs[CALIBRATIONS_ATTR][0])
    factor = 0.5 if check_is_quieter else 100.0  # the check's own timing of the references: quieter, or a busy machine
    at_check = dataclasses.replace(started, reference_ms={k: v * factor for k, v in started.reference_ms.items()})
    judged_by: list[Calibration] = []

    def fake_interleave(
        candidates: Sequence[Benchmark], _references: object, calibration: Calibration, _seconds: float, _lock: object
    ) -> list[LatencyStats]:
        judged_by.append(calibration)
        return [LatencyStats(1.0, 1.0, 1.0, 1.0, 50, c.spec, None, reference_ms=1.0, ratio=1.0, ratio_low=0.99,
                             ratio_high=1.01) for c in candidates]  # fmt: skip

    monkeypatch.setattr(recheck, "interleave", fake_interleave)
    monkeypatch.setattr(recheck, "calibrate", lambda spec, lock: at_check)
    recheck.check_front(run_dir)

    assert judged_by and all(c == (at_check if check_is_quieter else started) for c in judged_by)
    history = open_study(run_dir).user_attrs[CALIBRATIONS_ATTR]
    assert [Calibration.from_dict(c) for c in history] == [started, at_check]  # the check's timing is kept too
