"""The search: seeds first, budget as a constraint, failures recorded, resume after kill -9, Ray on loopback."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from helpers import FAST_LATENCY, FAST_PROXY, TINY_SPACE, tiny_settings
from optuna.trial import TrialState

from mvit_nas import InputError, preset
from mvit_nas.faults import FAULT_ENV
from mvit_nas.latency.lock import HOLD_LOG_ENV
from mvit_nas.run import LOCK_FILE, is_finished, open_study
from mvit_nas.search import _requeue_interrupted, search
from mvit_nas.settings import SearchSettings
from mvit_nas.space import load_space


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return open_study(run_dir).get_trials(deepcopy=False)


def test_seeds_are_trials_0_1_2_and_over_budget_trials_are_never_trained(tmp_path: Path) -> None:
    settings = SearchSettings(budget_ms=1e-3, latency=FAST_LATENCY, proxy=FAST_PROXY)
    outcome = search(settings, tmp_path / "run", trials=3, executor="local", workers=1)
    trials = outcome.study.get_trials(deepcopy=False)
    space = load_space()
    for trial, name in zip(trials, ("xxs", "xs", "s"), strict=True):
        assert trial.user_attrs["seed"] == name
        assert space.params_of(preset(name)) == space.params_of(space.decode(trial.params))
        assert trial.user_attrs["config"]["layer5"] == preset(name).to_dict()["layer5"]
        # Over budget: measured, constrained, never trained.
        assert trial.user_attrs["feasible"] is False
        assert trial.user_attrs["accuracy"] is None
        assert "proxy_seconds" not in trial.user_attrs
        assert trial.constraints["latency_over_budget_ms"] > 0
    assert outcome.front == []


def test_small_search_finishes_with_a_front_and_skips_repeated_configs(tmp_path: Path) -> None:
    outcome = search(tiny_settings(), tmp_path / "run", trials=8, executor="local", workers=2)
    trials = outcome.study.get_trials(deepcopy=False)
    assert sum(is_finished(t) for t in trials) == 8
    assert outcome.front, "a generous budget must give a non-empty front"
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        assert 0.0 <= trial.user_attrs["accuracy"] <= 1.0
        latency = trial.user_attrs["latency"]
        # Judged against the reference: ratio x the run's calibration, with its interval and the raw median beside it.
        assert trial.values[1] == latency["judged"] == pytest.approx(latency["ratio"] * latency["reference_ms"])
        assert latency["ratio_low"] <= latency["ratio"] <= latency["ratio_high"] and latency["median"] > 0
        assert trial.user_attrs["latency"]["backend"] == "eager"
        assert trial.user_attrs["proxy_resolution"] == 32  # half the space's 64 px: the proxy follows resolution
    keys = [t.user_attrs["config_key"] for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)), "a configuration evaluated twice"
    for trial in trials:
        if "duplicate_of" in trial.user_attrs:
            original = trials[trial.user_attrs["duplicate_of"]]
            assert trial.values == original.values
            assert trial.user_attrs["duration_s"] == 0.0


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "1:raise,2:nan,3:oom")
    outcome = search(tiny_settings(), tmp_path / "run", trials=6, executor="local", workers=1)
    trials = {t.number: t for t in outcome.study.get_trials(deepcopy=False)}
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["failure"].startswith("error: RuntimeError: injected fault")
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs["failure"].startswith("diverged")
    assert trials[3].state == TrialState.FAIL
    assert "memory" in trials[3].user_attrs["failure"]
    assert sum(is_finished(t) for t in trials.values()) == 6
    assert trials[0].state == TrialState.COMPLETE


def test_resuming_keeps_finished_trials_and_rejects_changed_settings(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    search(tiny_settings(), run_dir, trials=3, executor="local", workers=1)
    before = {t.number: (t.values, t.user_attrs) for t in _trials(run_dir)}
    search(tiny_settings(), run_dir, trials=6, executor="local", workers=1)
    after = {t.number: (t.values, t.user_attrs) for t in _trials(run_dir)}
    assert len(after) == 6
    assert all(after[number] == value for number, value in before.items())
    with pytest.raises(InputError) as caught:
        search(tiny_settings(budget_ms=5.0), run_dir, trials=6, executor="local")
    assert caught.value.field == "--run-dir"
    assert "budget_ms" in str(caught.value)


# Eight choices on three more knobs (4,096 architectures): the seeded sampler's first draws do
# not repeat one another, so a repeat after a resume can only come from re-drawing them.
WIDE_SPACE: dict[str, Any] = {
    **TINY_SPACE,
    "stem_channels": [8, 16, 24, 32, 40, 48, 56, 64],
    "layer1": {**TINY_SPACE["layer1"], "out_channels": [8, 16, 24, 32, 40, 48, 56, 64]},
    "layer2": {**TINY_SPACE["layer2"], "out_channels": [8, 16, 24, 32, 40, 48, 56, 64]},
}


def test_a_resumed_search_proposes_no_config_it_already_evaluated(tmp_path: Path) -> None:
    # Over budget everywhere (nothing is trained), and inside TPE's random start-up phase throughout.
    settings = tiny_settings(budget_ms=1e-6, space=WIDE_SPACE)
    search(settings, tmp_path / "run", trials=4, executor="local", workers=1)
    search(settings, tmp_path / "run", trials=8, executor="local", workers=1)
    trials = _trials(tmp_path / "run")
    keys = [t.user_attrs["config_key"] for t in trials]
    assert len(trials) == 8 and len(set(keys)) == 8, keys
    assert not any("duplicate_of" in t.user_attrs for t in trials)


def test_a_second_search_on_the_same_run_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="in use by another search") as caught:
            search(tiny_settings(), run_dir, trials=2, executor="local")
    assert caught.value.field == "--run-dir"
    assert not (run_dir / "study.db").exists()


def test_a_run_folder_on_a_nearly_full_disk_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = 100 * 2**20  # 100 MiB, under the 256 MiB a search asks for
    monkeypatch.setattr("mvit_nas.run.shutil.disk_usage", lambda path: SimpleNamespace(total=free, free=free))
    with pytest.raises(InputError, match="100 MiB free") as caught:
        search(tiny_settings(), tmp_path / "run", trials=2, executor="local")
    assert caught.value.field == "--run-dir"
    assert list(tmp_path.iterdir()) == []


def test_a_trial_killed_before_taking_its_queued_parameters_is_requeued_with_them() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({"layer2.out_channels": 8}, user_attrs={"retry_of": 0})
    killed = study.ask()  # RUNNING, its parameters still only queued: the driver died right here
    assert killed.params == {}
    assert _requeue_interrupted(study) == 1
    retry = study.get_trials(deepcopy=False, states=[TrialState.WAITING])[0]
    assert retry.system_attrs["fixed_params"] == {"layer2.out_channels": 8}
    assert retry.user_attrs["retry_of"] == killed.number


# --- Ray -------------------------------------------------------------------------------


def _listeners() -> set[tuple[str, str]]:
    """(address, port) of every listening TCP socket on this machine."""
    output = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    sockets = set()
    for line in output.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        sockets.add((address, port))
    return sockets


def _is_loopback(address: str) -> bool:
    address = address.strip("[]").removeprefix("::ffff:")
    return address.startswith("127.") or address == "::1"


def _write_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


@pytest.mark.slow
def test_local_ray_search_listens_on_loopback_only(tmp_path: Path) -> None:
    before = _listeners()
    run_dir = tmp_path / "run"
    command = [
        *("mvit-nas", "search", "--budget-ms", "1000", "--proxy-scale", "0.25", "--space", str(_write_space(tmp_path))),
        *("--trials", "6", "--epochs", "0.01", "--backend", "eager", "--run-dir", str(run_dir)),
    ]
    search_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen_during: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 240
    while search_process.poll() is None and time.monotonic() < deadline:
        seen_during |= _listeners() - before
        time.sleep(0.5)
    _, stderr = search_process.communicate(timeout=120)
    assert search_process.returncode == 0, stderr
    assert seen_during, "Ray opened no port while the search ran: the check saw nothing"
    exposed = sorted(socket for socket in seen_during if not _is_loopback(socket[0]))
    assert not exposed, f"listening beyond loopback during a search: {exposed}"
    assert sum(is_finished(t) for t in _trials(run_dir)) == 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _head_node_active(address: str, env: dict[str, str]) -> bool:
    status = subprocess.run(["ray", "status", "--address", address], capture_output=True, text=True, env=env)
    active = status.stdout.partition("Active:")[2].partition("Pending:")[0]
    return status.returncode == 0 and "node_" in active


_CLUSTER_DRIVER = """
import sys
sys.path.insert(0, "tests")
from helpers import tiny_settings
from mvit_nas.search import search
outcome = search(tiny_settings(), sys.argv[1], trials=4, workers=2, address=sys.argv[2])
print("front", len(outcome.front))
"""


@pytest.mark.slow
def test_search_against_an_existing_ray_cluster_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    # Token authentication, as the README tells cluster users to run it: the same token on both sides.
    # The driver is a fresh process, as a user's is: Ray keeps the first token it loads for the process.
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    start = [
        *("ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port)),
        *("--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"),
    ]
    # --block in a session of its own, so that stopping it stops this head only: `ray stop` would
    # kill every Ray on the machine, including other tests' private ones when the suite runs in parallel.
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    head = subprocess.Popen(start, env=env, start_new_session=True, **quiet)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        # The head comes up in stages (the GCS answers before the head's raylet has registered):
        # a driver can only join once the node is listed active.
        while not _head_node_active(address, env):
            assert time.monotonic() < deadline, "the Ray head never became ready"
            time.sleep(2)
        run_dir = tmp_path / "run"
        command = [sys.executable, "-c", _CLUSTER_DRIVER, str(run_dir), address]
        repo = Path(__file__).resolve().parent.parent
        driver = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert sum(is_finished(t) for t in _trials(run_dir)) == 4
        assert "front 0" not in driver.stdout and "front" in driver.stdout
    finally:
        _stop_session(head)


def _stop_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process``'s session: the Ray head and every process it started (they share its group)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def test_what_optuna_dashboard_shows_of_an_over_budget_trial(tmp_path: Path) -> None:
    # optuna-dashboard 0.21 serialises a trial's constraints from the system attribute "constraints"
    # (Optuna's old list format); Optuna 5 stores named constraints as "constraints:<name>", so the
    # dashboard shows none. The README says so and points at what it does show: the user attributes.
    search(tiny_settings(budget_ms=1e-6), tmp_path / "run", trials=2, executor="local", workers=1)
    for trial in _trials(tmp_path / "run"):
        assert trial.system_attrs.get("constraints", []) == []  # the dashboard's own read
        assert trial.user_attrs["feasible"] is False and trial.user_attrs["accuracy"] is None
        assert trial.values[0] == 0.0  # plotted at accuracy 0: never trained


@pytest.mark.slow
def test_in_a_two_worker_search_no_measurement_overlaps_another_process_compute(tmp_path: Path) -> None:
    log = tmp_path / "holds.jsonl"
    command = [
        *("mvit-nas", "search", "--budget-ms", "1000", "--proxy-scale", "0.25", "--space", str(_write_space(tmp_path))),
        *("--trials", "6", "--epochs", "0.05", "--backend", "eager", "--workers", "2"),
        *("--run-dir", str(tmp_path / "run")),
    ]
    env = {**os.environ, HOLD_LOG_ENV: str(log)}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert finished.returncode == 0, finished.stderr
    holds = [json.loads(line) for line in log.read_text().splitlines()]
    measurements = [h for h in holds if h["kind"] == "exclusive"]
    compute = [h for h in holds if h["kind"] == "shared"]
    assert len({h["pid"] for h in compute}) >= 2, "two workers should have trained"
    assert len(measurements) >= 6  # the calibration, the trials, the front's re-measurement
    overlaps = [
        (m, c)
        for m in measurements
        for c in compute
        if c["pid"] != m["pid"] and c["start"] < m["end"] and m["start"] < c["end"]
    ]
    assert not overlaps, f"a measurement overlapped another process's compute: {overlaps[:3]}"
