"""Test-only fault injection: makes chosen trials fail for real, so the reliability suite tests real failures.

Nothing here runs unless the environment variable :data:`FAULT_ENV` is set (the
tests set it in the driver's environment; Ray workers inherit it).
``MVIT_NAS_TEST_FAULTS="3:raise,5:nan"`` makes trial 3 raise and trial 5 diverge.
Faults are real: ``raise`` raises, ``nan`` trains with a learning rate of 1e12 so
that the loss really diverges, ``oom`` allocates far more memory than the machine
has, ``sleep`` sleeps past any trial timeout, ``kill`` SIGKILLs the worker process
running the trial. With ``MVIT_NAS_TEST_FAULT_LOG=FILE`` each fault first appends
``"<trial> <fault> <pid>"`` to FILE, so a test can tell how often (and in which
processes) a trial was attempted.

Example:

>>> inject_fault(3, ProxySpec()) == ProxySpec()  # no fault asked for: the spec comes back unchanged
True
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

from mvit_nas.proxy import ProxySpec

FAULT_ENV = "MVIT_NAS_TEST_FAULTS"
FAULT_LOG_ENV = "MVIT_NAS_TEST_FAULT_LOG"
FAULTS = ("raise", "nan", "oom", "sleep", "kill")


def inject_fault(trial_number: int, proxy: ProxySpec) -> ProxySpec:
    """Apply the fault the environment asks for ``trial_number`` (if any); returns the proxy spec to use."""
    faults = dict(item.split(":", 1) for item in os.environ.get(FAULT_ENV, "").split(",") if ":" in item)
    fault = faults.get(str(trial_number))
    log = os.environ.get(FAULT_LOG_ENV)
    if fault and log:
        with open(log, "a") as handle:
            handle.write(f"{trial_number} {fault} {os.getpid()}\n")
    if fault == "raise":
        raise RuntimeError(f"injected fault in trial {trial_number}")
    if fault == "oom":
        import torch

        torch.empty(1 << 42, dtype=torch.uint8).fill_(1)  # 4 TiB: a real allocation failure
    if fault == "sleep":
        time.sleep(3600)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "nan":
        return dataclasses.replace(proxy, lr=1e12, warmup_fraction=0.0)
    return proxy
