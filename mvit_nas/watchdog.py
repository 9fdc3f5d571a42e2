"""A private Ray never outlives its driver: :func:`guard_private_ray` kills its processes when the driver dies.

Ray ties its raylet, GCS server and monitors to the driver (``PR_SET_PDEATHSIG``), but
not what the raylet starts: after a ``kill -9`` of the driver (or the OOM killer) its
``DashboardAgent`` and ``RuntimeEnvAgent`` notice the dead raylet, then block for up to
a minute trying to report it to the dead GCS server, ignoring SIGTERM meanwhile (one
still listening on a loopback port), and repeated kills pile them up.

:func:`guard_private_ray` starts a small watchdog: this file run as a script, in a
session of its own (a Ctrl-C or a kill of the driver's process group does not reach
it), as a child of the driver. It holds no port and no Ray connection, and wakes four
times a second to compare its parent process id with the driver's. When the driver is
gone, by any means, it SIGKILLs every process of that Ray session, then exits:

* a process belongs to the session when its command line names the session folder
  (raylet, GCS server, monitors: ``--session-dir=...``), or a file under that folder is
  open in it (agents and workers, whose titles are rewritten to ``ray::...``, hold
  their log files there, and children inherit them). Session folders are unique
  (``session_<date>_<time>_<microseconds>_<pid>``): another Ray is never touched;
* killing is repeated until a scan finds no process of the session left.

When the driver stays alive but its raylet ends (``ray.shutdown()``, or a raylet
crash), the watchdog exits as soon as the session's processes are gone; any still
there after :data:`SHUTDOWN_GRACE_S` seconds are killed, except the driver's own
descendants, since the driver still owns them.

Example (the driver of a private Ray; ``ray.init`` returns the session folder):

>>> import ray  # doctest: +SKIP
>>> context = ray.init(address="local", include_dashboard=False)  # doctest: +SKIP
>>> guard_private_ray(context.address_info["session_dir"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["guard_private_ray"]

# How often the watchdog checks whether the driver (or its raylet) is still there, in seconds.
POLL_S = 0.25
# After the raylet ends under a living driver, how long Ray's own shutdown gets before leftovers are killed.
SHUTDOWN_GRACE_S = 10.0
# At most this many scan-and-kill passes after the driver died (a pass takes well under a second).
MAX_SWEEPS = 40

# The watchdog of each session this process guards (a second call for the same session does nothing).
_watchdogs: dict[str, subprocess.Popen[bytes]] = {}


def guard_private_ray(session_dir: str | None = None) -> None:
    """Make sure every process of this process's private Ray session dies when this process does.

    Call it in the driver right after ``ray.init(address="local", ...)``, with
    ``context.address_info["session_dir"]`` of the context ``ray.init`` returned; without
    it the folder is read from Ray's private global node (no public API names it). The
    watchdog is started once per session; it exits by itself when the session is over.
    """
    import ray

    if session_dir is None:
        # Private Ray API: only the RayContext returned by ray.init() names the session folder publicly.
        session_dir = ray._private.worker._global_node.get_session_dir_path()
    session_dir = os.path.abspath(session_dir)
    if session_dir in _watchdogs:
        return
    # Ray ships psutil in ray/thirdparty_files, importable once ray is imported; the watchdog
    # runs in isolated mode (-I: no script folder or PYTHONPATH on sys.path), so it gets the path.
    import psutil

    psutil_root = os.path.dirname(os.path.dirname(os.path.abspath(psutil.__file__)))
    command = [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), session_dir, psutil_root]
    # No inherited stdin/stdout/stderr: a pipe the watchdog held would keep a reader of the driver's output waiting.
    quiet = subprocess.DEVNULL
    watchdog = subprocess.Popen(
        command, stdin=quiet, stdout=quiet, stderr=quiet, close_fds=True, start_new_session=True
    )
    _watchdogs[session_dir] = watchdog
    # Reap it when it exits while this process lives on (after ray.shutdown()), so no zombie is left.
    threading.Thread(target=watchdog.wait, name="mvit-nas-ray-watchdog", daemon=True).start()


# Everything below runs in the watchdog process, which imports nothing of mvit_nas.


def _session_pattern(session_dir: str) -> re.Pattern[str]:
    """Matches the session folder (or its real path) inside a string, not a longer name that starts with it."""
    paths = sorted({session_dir, os.path.realpath(session_dir)}, key=len, reverse=True)
    return re.compile("(?:" + "|".join(re.escape(path) for path in paths) + r")(?![\w.-])")


def _in_session(proc: Any, pattern: re.Pattern[str]) -> bool:
    """Whether ``proc`` (a live, non-zombie ``psutil.Process``) is a process of the session."""
    import psutil

    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if any(pattern.search(arg) for arg in proc.cmdline()):
            return True
        return any(pattern.search(item.path) for item in proc.open_files())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _session_processes(pattern: re.Pattern[str], spare: set[int]) -> list[Any]:
    """The live processes of the session, except those whose id is in ``spare``."""
    import psutil

    return [proc for proc in psutil.process_iter() if proc.pid not in spare and _in_session(proc, pattern)]


def _kill(processes: list[Any]) -> None:
    import psutil

    for proc in processes:
        # psutil checks the process is the one scanned (same creation time), never a reused id.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()


def _find_raylet(pattern: re.Pattern[str]) -> Any:
    """The session's raylet (a ``psutil.Process``), or None where it is not (or no longer) running."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "raylet" and any(pattern.search(arg) for arg in cmdline):
            return proc
    return None


def _running(proc: Any) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _watch(driver: int, session_dir: str) -> None:
    """Wait until the driver or its raylet ends, then kill what is left of the session (see the module doc)."""
    pattern = _session_pattern(session_dir)
    spare = {os.getpid()}

    def driver_alive() -> bool:
        # This process is the driver's child: its parent id changes the moment the driver dies.
        return os.getppid() == driver

    raylet = _find_raylet(pattern)
    while driver_alive() and (raylet is None or _running(raylet)):
        time.sleep(POLL_S)
    if driver_alive():
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while driver_alive() and time.monotonic() < deadline:
            if not _session_processes(pattern, spare | {driver}):
                return
            time.sleep(1.0)
        if driver_alive():
            _kill(_session_processes(pattern, spare | {driver} | _descendants(driver)))
            return
    for _ in range(MAX_SWEEPS):
        leftovers = _session_processes(pattern, spare)
        if not leftovers:
            return
        _kill(leftovers)
        time.sleep(0.1)


def _main(argv: list[str]) -> None:
    """``watchdog.py DRIVER_PID SESSION_DIR PSUTIL_ROOT``: the watchdog process."""
    driver, session_dir, psutil_root = int(argv[0]), argv[1], argv[2]
    sys.path.insert(0, psutil_root)
    _watch(driver, session_dir)


if __name__ == "__main__":
    _main(sys.argv[1:])
