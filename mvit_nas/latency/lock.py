"""Device exclusivity across processes: :class:`DeviceLock` keeps training off a device while latency is measured.

One lock per physical device per machine (:func:`device_lock`), in a node-local
folder: every trial on this machine that trains or measures on that device uses
it, whatever run it belongs to; other machines and other devices (another GPU,
the CPU beside a GPU) have locks of their own.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set to a file path, every hold of every device lock in this process tree is appended there as a JSON
# line (pid, kind, start, end; Unix seconds): how a test shows that no measurement overlapped a worker's compute.
HOLD_LOG_ENV = "MVIT_NAS_LOCK_LOG"


@contextmanager
def _logged(kind: str) -> Iterator[None]:
    log = os.environ.get(HOLD_LOG_ENV)
    if not log:
        yield
        return
    start = time.time()
    try:
        yield
    finally:
        line = json.dumps({"pid": os.getpid(), "kind": kind, "start": start, "end": time.time()})
        with open(log, "a") as file:  # one short append per hold: lines from many processes stay whole
            file.write(line + "\n")


def _flock(path: Path, operation: int) -> int:
    # A fresh descriptor per acquisition: flock locks belong to the open file, so threads
    # and forked or pickled copies of one DeviceLock contend with each other as they should.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, operation)
    except BaseException:
        os.close(fd)
        raise
    return fd


class DeviceLock:
    """Cross-process reader/writer lock on a lock file (fcntl), writer-preferring.

    Training holds :meth:`shared` for a step or a few (many holders at once);
    latency measurement holds :meth:`exclusive`, which waits for the shared holders
    to leave and keeps new ones out. ``flock`` grants a shared lock whenever only
    shared holders are in, so two trainers re-taking it back to back would starve a
    measurer; a second file, the turnstile, fixes that: the measurer holds it while
    waiting and inside, and trainers pass through it briefly before taking the
    shared lock. Not re-entrant. Picklable (it holds paths only).

    >>> import pathlib, tempfile
    >>> lock = DeviceLock(pathlib.Path(tempfile.mkdtemp()) / "device.lock")
    >>> with lock.shared():  # a training step
    ...     pass
    >>> with lock.exclusive():  # a latency measurement
    ...     pass
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.turnstile = self.path.with_name(self.path.name + ".turnstile")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        turnstile = _flock(self.turnstile, fcntl.LOCK_EX)
        try:
            main = _flock(self.path, fcntl.LOCK_EX)
            try:
                with _logged("exclusive"):
                    yield
            finally:
                os.close(main)
        finally:
            os.close(turnstile)

    @contextmanager
    def shared(self) -> Iterator[None]:
        turnstile = _flock(self.turnstile, fcntl.LOCK_EX)
        try:
            main = _flock(self.path, fcntl.LOCK_SH)
        finally:
            os.close(turnstile)
        try:
            with _logged("shared"):
                yield
        finally:
            os.close(main)


def lock_dir() -> Path:
    """This machine's folder of device locks (node-local: the temporary folder, per user)."""
    return Path(tempfile.gettempdir()) / f"mvit-nas-{os.getuid()}" / "locks"


def device_key(device: str) -> str:
    """A name for the physical device ``device`` ("cpu", "cuda", "cuda:N") runs on, stable across processes.

    A CUDA device is named by its UUID: under Ray each task sees its GPUs renumbered from 0
    (``CUDA_VISIBLE_DEVICES``), so the index alone would give two GPUs one lock.

    >>> device_key("cpu")
    'cpu'
    """
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    return f"cuda-{torch.cuda.get_device_properties(index).uuid}"


def device_lock(device: str) -> DeviceLock:
    """The lock of the physical device ``device`` on this machine."""
    return DeviceLock(lock_dir() / f"{device_key(device)}.lock")
