"""Concurrency (issue 5.3): two searches on one run folder at once.

The choice (``mvit_nas.run.exclusive``): one search per run folder. A second
one is refused at once, before it reads or writes anything, with a one-line message
naming the run and ``--run-dir`` (exit 2 from the CLI); the lock is an ``flock`` that
dies with its process, so a run whose driver was killed is never locked out.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    REPO,
    assert_run_complete,
    driver_command,
    driver_env,
    file_hashes,
    run_driver,
    seed_run_dir,
    tiny_search_args,
)

from mvit_nas.faults import FAULT_LOG_ENV


@pytest.mark.slow
def test_a_second_search_command_on_a_busy_run_is_refused_naming_the_run(tmp_path: Path, data: Path) -> None:
    run_dir = seed_run_dir(tmp_path / "run", data)
    log = tmp_path / "faults.log"
    # The first search (Python API): its trial 0 hangs for an hour (the real 'sleep' fault),
    # so it holds the run for as long as the test needs.
    env = driver_env(faults="0:sleep") | {FAULT_LOG_ENV: str(log)}
    first = subprocess.Popen(
        driver_command(run_dir, 3), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not log.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, f"the first search ended: {first.communicate()[1][-2000:]}"
        before = file_hashes(run_dir)

        # The second: the CLI, same folder.
        command = [
            "mvit-nas",
            *tiny_search_args(tmp_path / "tiny.yaml"),
            *("--trials", "3", "--epochs", "0.01", "--backend", "eager", "--workers", "1", "--run-dir", str(run_dir)),
        ]
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("mvit-nas search: error: --run-dir: ")
        assert str(run_dir) in lines[0] and "in use by another search" in lines[0]
        assert file_hashes(run_dir) == before, "the refused search changed the run folder"
        assert first.poll() is None, "the refused search disturbed the running one"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # The lock died with the first search: the same run resumes and finishes.
    assert run_driver(run_dir, 3) == 0
    trials = assert_run_complete(run_dir, 3)
    assert trials[0].user_attrs["failure"] == "interrupted", "the hung trial was killed mid-run"


@pytest.mark.slow
def test_two_searches_started_together_never_lose_or_repeat_a_trial(tmp_path: Path, data: Path) -> None:
    run_dir = seed_run_dir(tmp_path / "run", data)
    requested = 3
    logs = [tmp_path / f"driver{index}.err" for index in range(2)]
    processes = []
    for path in logs:
        with path.open("w") as stderr:
            command = driver_command(run_dir, requested)
            processes.append(
                subprocess.Popen(command, cwd=REPO, env=driver_env(), stdout=subprocess.DEVNULL, stderr=stderr)
            )
    outcomes = [(process.wait(timeout=400), path.read_text()) for process, path in zip(processes, logs, strict=True)]
    for returncode, stderr in outcomes:
        # Each one either ran (the second may start after the first finished) or was refused.
        refused = "InputError: --run-dir:" in stderr and "in use by another search" in stderr
        assert returncode == 0 or (returncode == 1 and refused), stderr[-2000:]
    assert any(returncode == 0 for returncode, _ in outcomes)
    assert_run_complete(run_dir, requested)
