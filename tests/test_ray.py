"""The Ray executor: same store as the local executor, survives a killed worker.

Every test here that starts Ray is marked ``netns``: it runs only inside a
loopback-only network namespace (tests/loopback.py, run by tests/test_netns.py),
because a Ray head contacts non-loopback addresses when it starts.
"""
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rankrobust.store import load_store
from rankrobust.sweeps import load_spec, run_sweep
from tests.test_sweep import tiny_spec

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "rankrobust[ray]"')


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.mark.netns
def test_ray_node_address_is_loopback(local_ray):
    """Inside the namespace Ray can only bind loopback: its node (and every node it knows) is 127.0.0.1."""
    import socket

    assert sorted(name for _, name in socket.if_nameindex()) == ["lo"]
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    nodes = ray.nodes()
    assert nodes and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}


def task_pids() -> list[int]:
    """PIDs of Ray workers currently running a sweep cell (their process title names the task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"ray::run_cell" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


METRICS = ["test.recall@20", "test.ndcg@20", "valid.recall@20"]


@pytest.mark.netns
def test_ray_store_equals_local(tmp_path, local_ray):
    spec = load_spec(tiny_spec(tmp_path, losses=("sl", "bsl"), ratios=(0.0, 0.2)))
    local = run_sweep(spec, tmp_path / "local", progress=False)
    remote = run_sweep(spec, tmp_path / "ray", executor="ray", progress=False)
    assert local.done == remote.done == 4 and not remote.failed
    a = load_store(tmp_path / "local").set_index("cell_id").sort_index()
    b = load_store(tmp_path / "ray").set_index("cell_id").sort_index()
    assert list(a.index) == list(b.index) and (b["status"] == "done").all()
    # Ray workers run torch with 1 thread: equal up to float32 summation order
    np.testing.assert_allclose(a[METRICS].to_numpy(), b[METRICS].to_numpy(), atol=1e-4)
    again = run_sweep(spec, tmp_path / "ray", executor="ray", progress=False)
    assert again.skipped == 4 and again.done == 0


@pytest.mark.netns
def test_killed_worker_is_retried(tmp_path, local_ray):
    spec = load_spec(tiny_spec(tmp_path, losses=("sl", "bsl", "bpr"), ratios=(0.0, 0.2), epochs=25))
    out = tmp_path / "ray"
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "report", run_sweep(spec, out, executor="ray", progress=False)))
    thread.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and thread.is_alive():
        pids = task_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    thread.join(timeout=600)
    assert killed is not None, "no running task was found to kill"
    report = result["report"]
    assert report.done == 6 and not report.failed
    store = load_store(out)
    assert len(store) == 6 and store["cell_id"].is_unique and (store["status"] == "done").all()


def test_missing_ray_message(monkeypatch):
    import builtins

    from rankrobust.sweeps import executors as ray_executor

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match=r'pip install "rankrobust\[ray\]"'):
        ray_executor.import_ray()
