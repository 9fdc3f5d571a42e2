"""A long benchmark's records: every finished piece on disk at once, and a restarted run doing only what is missing."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import multi_fidelity, proxy_fidelity, proxy_fidelity_real
from benchmarks._common import append_record, read_records
from mvit_nas.config import ArchConfig, preset
from mvit_nas.proxy import ProxySpec


def test_records_read_back_in_order_and_a_line_cut_by_a_kill_costs_only_its_own_record(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.jsonl"
    append_record(path, {"job": 1})
    append_record(path, {"job": 2, "score": 0.5})
    with path.open("a") as file:
        file.write('{"job": 3, "sco')  # killed mid-write
    assert read_records(path) == [{"job": 1}, {"job": 2, "score": 0.5}]
    append_record(path, {"job": 3, "score": 0.7})  # the restarted run's record is not glued to the cut line
    assert read_records(path) == [{"job": 1}, {"job": 2, "score": 0.5}, {"job": 3, "score": 0.7}]
    assert read_records(tmp_path / "absent.jsonl") == []


def test_proxy_fidelity_reruns_only_the_evaluations_its_records_lack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = ProxySpec()
    long = dataclasses.replace(short, epochs=2 * short.epochs)
    jobs = proxy_fidelity.make_jobs([("xxs", preset("xxs"))], short, long)
    records = tmp_path / "jobs.jsonl"
    for job in jobs:
        done = {"name": job.name, "what": job.what, "config": job.config, "spec": job.spec, "score": 0.1}
        append_record(records, done)
    # Another recipe's record for the same config and proxy does not stand in for this one's.
    other = dataclasses.replace(jobs[0], spec={**jobs[0].spec, "lr": 1.0})
    assert not other.matches(read_records(records)[0])

    def no_pool(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("every evaluation is held: nothing should run")

    monkeypatch.setattr(proxy_fidelity.concurrent.futures, "ProcessPoolExecutor", no_pool)
    results = proxy_fidelity.run_jobs(jobs, workers=1, records_file=records)
    assert sorted((r["name"], r["what"]) for r in results) == sorted((j.name, j.what) for j in jobs)


def test_multi_fidelity_runs_only_what_its_records_of_the_same_settings_lack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "runs.jsonl"
    monkeypatch.setattr(multi_fidelity, "STATE_DIR", tmp_path)
    monkeypatch.setattr(multi_fidelity, "RUNS_FILE", records)
    monkeypatch.setattr(sys, "argv", ["multi_fidelity", "--minutes", "15", "--seeds", "0", "--workdir", str(tmp_path)])
    settings = {"minutes": 15.0, "proxy_images": 3_200, "dataset": "folder:../shared/datasets/cifar10"}
    settings |= {"budget_ms": 5.0, "verify_seeds": 2, "workers": 2}
    scores = {"hypervolume_verified_front": 1.0, "hypervolume_verified_seeds": 0.5}
    append_record(records, {"arm": "single", "seed": 0, **settings, **scores})
    # The same arm and seed searched for another wall time does not stand in for this one.
    append_record(records, {"arm": "halving-naswot", "seed": 0, **settings, "minutes": 10.0, **scores})
    ran: list[tuple[str, int]] = []

    def run(arm: str, seed: int, args: object) -> dict[str, object]:
        ran.append((arm, seed))
        return {"arm": arm, "seed": seed, **settings, **scores, "hypervolume_verified_front": 1.5}

    written: list[dict[str, object]] = []
    monkeypatch.setattr(multi_fidelity, "_run", run)
    monkeypatch.setattr(multi_fidelity, "_remeasure", lambda runs, args: {})
    monkeypatch.setattr(multi_fidelity, "write_result", lambda name, result: written.append(result))
    multi_fidelity.main()
    assert ran == [("halving-naswot", 0)]
    assert written[-1]["summary"]["hypervolume_ratio_over_single"] == {"halving-naswot": 1.5}
    assert written[-1]["passed"] and not written[-1]["partial"]


def test_multi_fidelity_searches_a_run_once_and_a_cut_search_again_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"minutes": 15.0, "proxy_images": 3_200, "dataset": "synthetic", "budget_ms": 5.0}
    args = argparse.Namespace(workdir=tmp_path, **settings, verify_seeds=2, workers=2)
    searches: list[Path] = []

    def run_search(settings: object, run_dir: Path, options: object) -> object:
        searches.append(run_dir)
        run_dir.mkdir(parents=True)  # fails if the cut search's folder was left behind
        return SimpleNamespace(outcome=SimpleNamespace(finished=7))

    monkeypatch.setattr(multi_fidelity, "run_search", run_search)
    monkeypatch.setattr(multi_fidelity, "read_study", lambda run_dir: SimpleNamespace(user_attrs={}))
    monkeypatch.setattr(multi_fidelity, "rung_entries", lambda study: [])
    monkeypatch.setattr(multi_fidelity, "_score", lambda *a: {"hypervolume_verified_front": 1.0})
    # A search cut short (a folder without the finished-search record) is thrown away and run again.
    (tmp_path / "single-seed0").mkdir()
    (tmp_path / "single-seed0" / "study.db").write_text("cut short")
    first = multi_fidelity._run("single", 0, args)
    assert searches == [tmp_path / "single-seed0"] and not (tmp_path / "single-seed0" / "study.db").exists()
    assert first["finished_trials"] == 7
    # Killed during verification, then restarted: the finished search is not searched again for another --minutes.
    again = multi_fidelity._run("single", 0, args)
    assert len(searches) == 1 and again["search_seconds"] == first["search_seconds"]
    # Under other settings the finished search does not stand in.
    multi_fidelity._run("single", 0, argparse.Namespace(**{**vars(args), "minutes": 10.0}))
    assert len(searches) == 2


def test_multi_fidelity_times_runs_again_from_their_records_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = argparse.Namespace(workdir=tmp_path / "gone", budget_ms=5.0, dataset="synthetic", proxy_images=3_200)
    xxs, xs = preset("xxs"), preset("xs")
    timed: list[list[ArchConfig]] = []

    def measure_together(configs: list[ArchConfig], spec: object, calibration: object) -> list[SimpleNamespace]:
        timed.append(configs)
        return [SimpleNamespace(judged_ms=1.0 if c == xxs else 4.0) for c in configs]

    monkeypatch.setattr(multi_fidelity, "measure_together", measure_together)
    monkeypatch.setattr(multi_fidelity, "calibrate", lambda spec: None)
    runs = [
        {
            "arm": "single",
            "seed": 0,
            "front": [{"verified": 0.6, "latency_ms": 9.0, "config": xxs.to_dict()}],
            "fitted_seeds": [{"verified": 0.7, "latency_ms": 9.0, "config": xs.to_dict()}],
        },
        {"arm": "halving-naswot", "seed": 0, "front": [{"verified": 0.5, "config": xs.to_dict()}], "fitted_seeds": []},
    ]
    together = multi_fidelity._remeasure(runs, args)
    assert timed == [[xxs, xs]]  # each architecture once, though two runs verified xs, and no run folder read
    assert together is not None
    assert together["single-seed0"]["front"] == [{"verified": 0.6, "latency_ms": 1.0}]
    assert together["single-seed0"]["hypervolume_verified_front"] == pytest.approx(0.6 * (5.0 - 1.0))
    assert together["halving-naswot-seed0"]["hypervolume_verified_front"] == pytest.approx(0.5 * (5.0 - 4.0))
    # A record from before configs were kept cannot be timed again: no headline from only some runs.
    del runs[1]["front"][0]["config"]
    assert multi_fidelity._remeasure(runs, args) is None
    assert len(timed) == 1


def test_proxy_fidelity_real_truth_is_the_finished_seeds_and_its_ceiling_two_independent_halves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy_fidelity_real, "JOBS_FILE", tmp_path / "jobs.jsonl")
    archs = {f"a{i}": {"config": preset("xxs").to_dict(), "latency_ms": float(i)} for i in range(5)}
    # Seeds 0 and 1 agree exactly; seeds 2 and 3 order the architectures the other way round.
    scores = {0: [1, 2, 3, 4, 5], 1: [1, 2, 3, 4, 5], 2: [5, 4, 3, 2, 1], 3: [5, 4, 3, 2, 1]}
    for seed, values in scores.items():
        for index, score in enumerate(values):
            if (seed, index) != (3, 4):  # the last seed is unfinished for one architecture
                append_record(
                    proxy_fidelity_real.JOBS_FILE, {"arch": f"a{index}", "what": f"truth_s{seed}", "score": score}
                )
    text = {"truth": {"factor": 10.0}}
    partial = proxy_fidelity_real.summarise(archs, [None] * 100, text)
    assert partial["summary"]["truth_seeds"] == 3  # seed 3 does not count until every architecture has it
    assert partial["summary"]["ceiling_tau"] == 1.0  # halves of one seed each: seed 0 against seed 1
    append_record(proxy_fidelity_real.JOBS_FILE, {"arch": "a4", "what": "truth_s3", "score": 1})
    done = proxy_fidelity_real.summarise(archs, [None] * 100, text)
    assert done["summary"]["truth_seeds"] == 4
    assert done["summary"]["ceiling_tau"] == -1.0  # the mean of seeds 0-1 against the mean of seeds 2-3
    by_budget = done["ceiling_by_budget"]
    assert by_budget["10x, one seed"]["tau"] == 1.0 and by_budget["10x, mean of 2 seeds"]["tau"] == -1.0
    # Every halving is kept: pairing each seed with one of the other order cancels the order out (tau undefined).
    assert done["ceiling_every_split"] == {
        "truth_s0+truth_s1 vs truth_s2+truth_s3": -1.0,
        "truth_s0+truth_s2 vs truth_s1+truth_s3": None,
        "truth_s0+truth_s3 vs truth_s1+truth_s2": None,
    }
    assert done["trained_on"]["truth_s3"] == {"unrecorded": 5}
