"""Where evaluations run: the :class:`Executor` interface, in-process (:class:`LocalExecutor`) or on Ray.

The search driver submits one call per trial and polls for finished ones; an
executor only runs a function and hands back its result (or re-raises its error).

Example:

>>> pool = LocalExecutor(lambda x: x * 2)
>>> handle = pool.submit(21)
>>> pool.wait([handle], timeout=0.0) == [handle], pool.result(handle)
(True, 42)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol


class Executor(Protocol):
    """Runs calls of one function; handles are opaque."""

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
    """Runs calls as Ray tasks, ``cpus_per_call`` CPUs each.

    Without ``address`` it starts a private Ray on this machine that listens on
    127.0.0.1 only (an open Ray port lets anyone who reaches it run code,
    CVE-2023-48022); with ``address`` it joins that cluster, whose nodes must have
    mvit-nas installed.
    """

    def __init__(
        self, function: Callable[..., Any], workers: int, cpus_per_call: int, address: str | None = None
    ) -> None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        self._ray = ray
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            # "local": a new private instance even where `ray start` left a cluster running on this
            # machine, which ray.init() without an address would join.
            ray.init(
                address="local",
                num_cpus=workers * cpus_per_call,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level="ERROR",
                log_to_driver=False,
            )
        # A worker killed mid-call (SIGKILL, node loss) is retried once, then the call fails.
        self._remote = ray.remote(num_cpus=cpus_per_call, max_retries=1, retry_exceptions=False)(function)

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
