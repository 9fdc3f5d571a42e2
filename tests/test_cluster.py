"""Trials on Ray: GPU shares requested from Ray, and a two-node cluster whose worker cannot see the run folder.

Everything runs on this CPU machine: a private Ray may *declare* a GPU it does not
have, which is enough to test what Ray assigns (the plumbing, not CUDA).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import tiny_settings

from mvit_nas import InputError
from mvit_nas.executors import RayExecutor
from mvit_nas.latency import LatencySpec
from mvit_nas.run import TrialRecord, is_finished, read_study
from mvit_nas.settings import RunOptions

REPO = Path(__file__).resolve().parent.parent


def _gpu_probe() -> Any:
    """A task that reports what it sees of its GPU: Ray's assignment, CUDA's view, and when it held it.

    Made inside a function so that Ray ships it by value: a worker cannot import a test module.
    """

    def probe(seconds: float) -> tuple[list[Any], str | None, float, float]:
        import ray

        started = time.time()
        time.sleep(seconds)
        return list(ray.get_gpu_ids()), os.environ.get("CUDA_VISIBLE_DEVICES"), started, time.time()

    return probe


@pytest.mark.slow
def test_gpu_trials_get_a_gpu_from_ray_and_fractions_share_one() -> None:
    pool = RayExecutor(_gpu_probe(), workers=2, cpus_per_call=1, gpus_per_call=0.5, num_gpus=1)
    try:
        first, second = (pool.result(handle) for handle in [pool.submit(3.0), pool.submit(3.0)])
    finally:
        pool.shutdown()
    for gpus, visible, _, _ in (first, second):
        assert [str(gpu) for gpu in gpus] == ["0"] and visible == "0"
    # Two half-GPU tasks were packed on the one GPU: each started before the other ended.
    assert first[2] < second[3] and second[2] < first[3]


@pytest.mark.slow
def test_a_task_that_asks_for_no_gpu_sees_none() -> None:
    # Why every trial must ask: Ray assigns no GPU to a task that requested none (older Ray also hid
    # them with CUDA_VISIBLE_DEVICES=""; Ray 2.60 leaves the variable unset, and shares nothing out).
    pool = RayExecutor(_gpu_probe(), workers=1, cpus_per_call=1, num_gpus=1)
    try:
        gpus, visible, _, _ = pool.result(pool.submit(0.0))
    finally:
        pool.shutdown()
    assert gpus == [] and visible in ("", None)


@pytest.mark.slow
def test_cuda_trials_on_a_ray_without_gpus_are_refused_naming_the_device() -> None:
    with pytest.raises(InputError) as caught:
        RayExecutor(_gpu_probe(), workers=1, cpus_per_call=1, gpus_per_call=1.0, num_gpus=0)
    assert caught.value.field == "--device" and "has none" in str(caught.value)


def test_a_cuda_search_asks_ray_for_each_trials_gpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}

    def fake_ray_executor(function: Any, workers: int, cpus: int, address: str | None = None, **gpu: Any) -> None:
        asked.update(workers=workers, cpus=cpus, address=address, **gpu)

    search_module = importlib.import_module("mvit_nas.search")  # the attribute mvit_nas.search is the function
    monkeypatch.setattr(search_module, "RayExecutor", fake_ray_executor)
    cuda = dataclasses.replace(tiny_settings(), latency=LatencySpec(device="cuda", backend="eager"))
    search_module.make_executor(cuda, RunOptions(workers=4, gpus_per_trial=0.5))
    assert asked["gpus_per_call"] == 0.5 and asked["workers"] == 4
    search_module.make_executor(tiny_settings(), RunOptions(gpus_per_trial=0.5))
    assert asked["gpus_per_call"] == 0.0  # a CPU search asks for no GPU


# --- two nodes, no shared disk ------------------------------------------------------------

# Runs inside a fresh network namespace (only loopback exists, so nothing leaves the machine):
# a head that runs nothing (0 CPUs), a worker node in a mount namespace where the run folder's
# parent is an empty read-only tmpfs, then the search driver.
_CLUSTER = r"""
set -eu
ip link set lo up
ray start --head --node-ip-address 127.0.0.1 --port 6379 --num-cpus 0 --include-dashboard false \
    --disable-usage-stats > "$LOGS/head.log" 2>&1
unshare --mount --propagation private sh -c '
    mount -t tmpfs -o ro,size=1m tmpfs "$HIDDEN" &&
    ray start --address 127.0.0.1:6379 --node-ip-address 127.0.0.1 --num-cpus 2 --disable-usage-stats
' > "$LOGS/worker.log" 2>&1
for _ in $(seq 90); do
    [ "$(ray status --address 127.0.0.1:6379 2>/dev/null | grep -c ' node_')" -ge 2 ] && break
    sleep 2
done
ray status --address 127.0.0.1:6379 > "$LOGS/status.log" 2>&1
python -c "$DRIVER" "$HIDDEN/run" 127.0.0.1:6379
"""

_DRIVER = """
import sys, time
sys.path.insert(0, "tests")
from helpers import tiny_settings
from mvit_nas.search import search
started = time.perf_counter()
outcome = search(tiny_settings(), sys.argv[1], trials=4, workers=2, address=sys.argv[2])
print("finished", outcome.finished, "in", round(time.perf_counter() - started, 1), "s")
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (namespaces)")
def test_a_two_node_cluster_whose_worker_cannot_see_the_run_folder_completes_the_search(tmp_path: Path) -> None:
    hidden, logs = tmp_path / "hidden", tmp_path / "logs"
    hidden.mkdir()
    logs.mkdir()
    env = {
        **os.environ,
        # A head that refuses other nodes (=0) would make this a one-node cluster; only loopback exists here.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "HIDDEN": str(hidden),
        "LOGS": str(logs),
        "DRIVER": _DRIVER,
    }
    command = ["unshare", "--net", "--fork", "sh", "-c", _CLUSTER]
    # A session of its own: stopping it stops this cluster only, never another test's Ray.
    cluster = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = cluster.communicate(timeout=900)
    finally:
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=60)
    text = output.decode(errors="replace")
    print(text)  # the driver's report, wall time included (shown with pytest -rP)
    notes = "".join(f"\n--- {path.name}\n{path.read_text()[-2000:]}" for path in sorted(logs.iterdir()))
    assert cluster.returncode == 0 and "finished 4" in text, text[-4000:] + notes
    assert " node_" in (logs / "status.log").read_text()
    trials = read_study(hidden / "run").get_trials(deepcopy=False)
    assert sum(is_finished(t) for t in trials) == 4
    assert all(t.state.name == "COMPLETE" for t in trials), [TrialRecord.of(t).failure for t in trials]
    nodes = {TrialRecord.of(t).node for t in trials}
    assert len(nodes) == 1 and None not in nodes, nodes  # every trial on the one node that has CPUs
    assert all(TrialRecord.of(t).hardware for t in trials)
