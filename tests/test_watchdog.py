"""A private Ray never outlives its driver (issue 10, item 5): :func:`guard_private_ray`.

Each test starts a small driver in a subprocess (a process group of its own) that does the
private ``ray.init`` of ``RayExecutor``, guards it and runs one task. After a SIGKILL of the
driver's PID alone (what ``kill -9 PID`` or the OOM killer does), no process of its Ray session
may be left; a driver that ends normally, or shuts Ray down and lives on, leaves no watchdog.

A process of the session is one the driver had started (directly or not) when it printed its
session folder, or one whose command line or open files name that folder. Every test stops
what it started, whatever happens.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Generous: the test checks that the processes go, not how fast (the watchdog needs about a second).
GONE_WITHIN_S = 30.0

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from mvit_nas.watchdog import guard_private_ray

    context = ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
        log_to_driver=False,
    )
    guard_private_ray(context.address_info["session_dir"])

    @ray.remote
    def one():
        return 1

    assert ray.get(one.remote()) == 1
    print(context.address_info["session_dir"], flush=True)
    if sys.argv[1] == "shutdown":
        sys.stdin.readline()
        ray.shutdown()
        print("down", flush=True)
    if sys.argv[1] != "exit":
        time.sleep(600)
    """
)


def _psutil() -> Any:
    import ray  # noqa: F401  (Ray puts the psutil it bundles on sys.path)

    return importlib.import_module("psutil")


def _start(mode: str) -> tuple[subprocess.Popen[str], str, list[Any]]:
    """The driver (``mode``: sleep, exit, or shutdown at a line on its stdin), its session folder and what it
    had started when it printed that folder."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert driver.stdout is not None
    session_dir = driver.stdout.readline().strip()
    if not session_dir:
        driver.kill()
        _, errors = driver.communicate(timeout=60)
        pytest.fail(f"the driver printed no session folder (rc {driver.returncode}):\n{errors[-3000:]}")
    psutil = _psutil()
    try:
        tree = psutil.Process(driver.pid).children(recursive=True)
    except psutil.NoSuchProcess:  # an "exit" driver may be gone already
        tree = []
    return driver, session_dir, tree


def _alive(processes: list[Any], session_dir: str, spare: set[int]) -> list[str]:
    """Descriptions of the live, non-zombie processes among ``processes`` or naming ``session_dir``."""
    psutil = _psutil()
    names = re.compile(re.escape(session_dir) + r"(?![\w.-])")
    found: dict[int, Any] = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid in found or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(names.search(arg) for arg in proc.cmdline()) or any(
                names.search(item.path) for item in proc.open_files()
            ):
                found[proc.pid] = proc
    described = []
    for pid, proc in sorted(found.items()):
        if pid not in spare:
            with contextlib.suppress(psutil.Error):
                described.append(f"{pid} {proc.name()} (up {time.time() - proc.create_time():.0f} s)")
    return described


def _wait_until_gone(processes: list[Any], session_dir: str, spare: set[int]) -> list[str]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := _alive(processes, session_dir, spare)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _stop(driver: subprocess.Popen[str], session_dir: str, tree: list[Any]) -> None:
    """Kill the driver's process group and anything of the session still alive."""
    psutil = _psutil()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(driver.pid, signal.SIGKILL)
    driver.kill()
    names = re.compile(re.escape(session_dir) + r"(?![\w.-])")
    leftovers = list(tree)
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(names.search(arg) for arg in proc.cmdline()) or any(
                names.search(item.path) for item in proc.open_files()
            ):
                leftovers.append(proc)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    driver.communicate(timeout=60)


def _has_watchdog(tree: list[Any]) -> bool:
    psutil = _psutil()
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            if any(arg.endswith("watchdog.py") for arg in proc.cmdline()):
                return True
    return False


@pytest.mark.slow
def test_sigkill_of_the_driver_alone_leaves_no_process_of_its_ray() -> None:
    driver, session_dir, tree = _start("sleep")
    try:
        assert {"raylet", "gcs_server"} <= {proc.name() for proc in tree}, "the driver's Ray is not running"
        assert _has_watchdog(tree)
        os.kill(driver.pid, signal.SIGKILL)  # the PID alone, not its group
        driver.wait()
        left = _wait_until_gone(tree, session_dir, spare=set())
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after the driver's SIGKILL: {left}"
    finally:
        _stop(driver, session_dir, tree)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "shutdown"])
def test_a_driver_that_ends_or_shuts_ray_down_leaves_no_watchdog(mode: str) -> None:
    """``exit``: the driver returns (Ray's exit hook shuts Ray down); ``shutdown``: it calls
    ``ray.shutdown()`` and lives on (a long-lived driver must not collect watchdogs)."""
    driver, session_dir, tree = _start(mode)
    try:
        if mode == "exit":
            assert driver.wait(timeout=120) == 0
        else:
            assert _has_watchdog(tree)
            assert driver.stdin is not None and driver.stdout is not None
            driver.stdin.write("\n")
            driver.stdin.flush()
            assert driver.stdout.readline().strip() == "down", "the driver did not shut Ray down"
        # The living driver keeps its own log files of the session open: it is not a leftover.
        left = _wait_until_gone(tree, session_dir, spare={driver.pid})
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after the driver's Ray ended: {left}"
        assert driver.poll() is None or mode == "exit", "the driver died"
    finally:
        _stop(driver, session_dir, tree)


SEARCH_DRIVER = """
import sys
sys.path.insert(0, "tests")
from helpers import tiny_settings
from mvit_nas.search import search
search(tiny_settings(), sys.argv[1], trials=int(sys.argv[2]), workers=1)
"""


def _finished_trials(run_dir: Path) -> int:
    from mvit_nas.run import is_finished, read_study
    from mvit_nas.validate import InputError

    try:
        return sum(is_finished(t) for t in read_study(run_dir).get_trials(deepcopy=False))
    except (InputError, OSError):  # no study yet
        return 0


@pytest.mark.slow
def test_a_search_killed_by_its_pid_leaves_no_ray_and_the_same_command_completes_it(tmp_path: Path) -> None:
    run_dir, trials = tmp_path / "run", 4
    command = [sys.executable, "-c", SEARCH_DRIVER, str(run_dir), str(trials)]
    driver = subprocess.Popen(command, cwd=REPO, start_new_session=True, stderr=subprocess.PIPE, text=True)
    session_dir, tree = "", []
    try:
        deadline = time.monotonic() + 300
        while _finished_trials(run_dir) < 1:  # mid-run: a trial told, the others to come
            if driver.poll() is not None or time.monotonic() > deadline:
                driver.kill()
                pytest.fail(f"the search ended or never got going: {driver.communicate()[1][-3000:]}")
            time.sleep(1)
        tree = _psutil().Process(driver.pid).children(recursive=True)
        raylet = next(proc for proc in tree if proc.name() == "raylet")
        session_dir = next(m.group(1) for arg in raylet.cmdline() if (m := re.search(r"(/\S*/session_[^/\s=]+)", arg)))
        os.kill(driver.pid, signal.SIGKILL)  # the PID alone, as `kill -9 PID` or the OOM killer does
        driver.wait()
        left = _wait_until_gone(tree, session_dir, spare=set())
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after the search's SIGKILL: {left}"
        again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _finished_trials(run_dir) == trials
    finally:
        _stop(driver, session_dir or "/nonexistent-session", tree)
