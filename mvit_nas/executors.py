"""Where evaluations run: the :class:`Executor` interface, in-process (:class:`LocalExecutor`) or on Ray.

The search driver submits one call per trial and polls for finished ones; an
executor only runs a function and hands back its result (or re-raises its error).
Large inputs every call needs (the dataset) are :meth:`~Executor.share`-d once:
a worker on any machine fetches them from Ray's object store, never from the
driver's disk.

Example:

>>> pool = LocalExecutor(lambda x, shared: x * shared.get())
>>> handle = pool.submit(21, pool.share(2))
>>> pool.wait([handle], timeout=0.0) == [handle], pool.result(handle)
(True, 42)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mvit_nas.validate import InputError
from mvit_nas.watchdog import guard_private_ray

_FETCHED: dict[str, Any] = {}  # this worker process's copy of the shared input it last fetched


@dataclass(frozen=True)
class Shared:
    """An input sent once for many calls: the value itself (in-process) or a reference into Ray's object store."""

    value: Any = None
    ref: Any = None  # a Ray ObjectRef; nested in this record so that Ray does not fetch it for every call

    def get(self) -> Any:
        """The value; a Ray worker fetches it once and keeps it for the calls that follow."""
        if self.ref is None:
            return self.value
        key = self.ref.hex()
        if key not in _FETCHED:
            import ray

            _FETCHED.clear()  # one run's inputs at a time
            _FETCHED[key] = ray.get(self.ref)
        return _FETCHED[key]


def node_name() -> str:
    """The machine this process runs on: its host name, and its Ray node id inside a Ray worker."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host} ({ray.get_runtime_context().get_node_id()[:12]})"
    except ImportError:
        pass
    return host


class Executor(Protocol):
    """Runs calls of one function; handles are opaque."""

    def share(self, value: Any) -> Shared:
        """Make ``value`` available to every call (pass the returned :class:`Shared` as an argument)."""
        ...

    def submit(self, *args: Any) -> Any:
        """Start one call; returns its handle."""
        ...

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        """The handles among ``handles`` whose call has finished (waiting at most ``timeout`` s for one)."""
        ...

    def result(self, handle: Any) -> Any:
        """The call's return value, or its exception raised here."""
        ...

    def cancel(self, handle: Any) -> None:
        """Stop the call (a Ray task is killed) and forget it."""
        ...

    def shutdown(self) -> None:
        """Release every resource the executor started."""
        ...


class LocalExecutor:
    """Runs calls in this process at submission, one at a time (tests, benchmarks, no Ray)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        self._done: dict[int, tuple[Any, BaseException | None]] = {}
        self._next = 0

    def share(self, value: Any) -> Shared:
        return Shared(value=value)

    def submit(self, *args: Any) -> int:
        handle, self._next = self._next, self._next + 1
        try:
            self._done[handle] = (self._function(*args), None)
        except Exception as error:
            self._done[handle] = (None, error)
        return handle

    def wait(self, handles: list[int], timeout: float | None) -> list[int]:
        return [handle for handle in handles if handle in self._done]

    def result(self, handle: int) -> Any:
        value, error = self._done.pop(handle)
        if error is not None:
            raise error
        return value

    def cancel(self, handle: int) -> None:
        self._done.pop(handle, None)

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """Runs calls as Ray tasks, ``cpus_per_call`` CPUs (and ``gpus_per_call`` GPUs) each.

    Without ``address`` it starts a private Ray on this machine that listens on
    127.0.0.1 only (an open Ray port lets anyone who reaches it run code,
    CVE-2023-48022) and declares the GPUs torch sees (or ``num_gpus``); with
    ``address`` it joins that cluster, whose nodes must have mvit-nas installed.
    Calls that ask for a GPU are scheduled by Ray on nodes that have one, and see
    only the GPU(s) Ray assigned them (``CUDA_VISIBLE_DEVICES``); a fraction
    (``gpus_per_call=0.5``) lets that many calls share one GPU.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        workers: int,
        cpus_per_call: int,
        address: str | None = None,
        *,
        gpus_per_call: float = 0.0,
        num_gpus: int | None = None,
    ) -> None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        self._ray = ray
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            if num_gpus is None:
                import torch

                num_gpus = torch.cuda.device_count() if gpus_per_call else 0
            # "local": a new private instance even where `ray start` left a cluster running on this
            # machine, which ray.init() without an address would join.
            context = ray.init(
                address="local",
                num_cpus=workers * cpus_per_call,
                num_gpus=num_gpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level="ERROR",
                log_to_driver=False,
            )
            # A private Ray must not outlive this process, however it dies (kill -9, the OOM killer).
            # Never for a cluster joined with --address: that Ray is the user's.
            guard_private_ray(context.address_info["session_dir"])
        if gpus_per_call and not ray.cluster_resources().get("GPU"):
            where = f"the Ray cluster at {address}" if address else "this machine (torch sees no CUDA device)"
            ray.shutdown()
            raise InputError("--device", f"cuda trials need a GPU, but {where} has none; use --device cpu")
        # A worker killed mid-call (SIGKILL, node loss) is retried once, then the call fails.
        self._remote = ray.remote(
            num_cpus=cpus_per_call, num_gpus=gpus_per_call, max_retries=1, retry_exceptions=False
        )(function)

    def share(self, value: Any) -> Shared:
        return Shared(ref=self._ray.put(value))

    def submit(self, *args: Any) -> Any:
        return self._remote.remote(*args)

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        done, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    def result(self, handle: Any) -> Any:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as error:
            raise error.as_instanceof_cause() from None

    def cancel(self, handle: Any) -> None:
        self._ray.cancel(handle, force=True)

    def shutdown(self) -> None:
        self._ray.shutdown()
