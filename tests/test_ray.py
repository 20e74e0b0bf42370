"""The Ray executor: same store as the local executor, survives a killed worker.

Every test here that starts Ray is marked ``netns``: it runs only inside a
loopback-only network namespace (tests/loopback.py, run by tests/test_netns.py),
because a Ray head contacts non-loopback addresses when it starts.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rankrobust.store import load_store
from rankrobust.sweeps import load_spec, run_sweep
from tests.test_sweep import tiny_spec

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "rankrobust[ray]"')


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray instance whose workers start in a folder of their own (not the tests' working directory)."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-node-cwd"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    finally:
        os.chdir(here)
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
    # where each cell ran is recorded: this host, a Ray node (none for the local executor), the absolute folder
    assert (b["placement.host"] == socket.gethostname()).all() and b["placement.node_id"].notna().all()
    assert "placement.node_id" not in a or a["placement.node_id"].isna().all()
    assert all(Path(d).is_absolute() and Path(d).parent == (tmp_path / "ray" / "runs") for d in b["placement.run_dir"])


@pytest.mark.netns
def test_relative_out_lands_in_the_drivers_folder(tmp_path, local_ray, monkeypatch):
    """Tasks run in another working directory than the driver; a relative --out still means the driver's folder."""
    worker_cwd = ray.get(ray.remote(lambda: os.getcwd()).remote())
    monkeypatch.chdir(tmp_path)
    assert Path(worker_cwd).resolve() != tmp_path.resolve()  # else this test would prove nothing
    spec = load_spec(tiny_spec(tmp_path, losses=("sl",), ratios=(0.0,)))
    report = run_sweep(spec, "relative-out", executor="ray", progress=False)
    assert report.done == 1 and not report.failed
    assert len(load_store(tmp_path / "relative-out")) == 1
    assert not (Path(worker_cwd) / "relative-out").exists()


@pytest.mark.netns
def test_unmeetable_request_stops_at_once(tmp_path, local_ray):
    spec_path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0,))
    data = yaml.safe_load(spec_path.read_text())
    data["options"]["resources"] = {"num_cpus": 1, "resources": {"no_such_accelerator": 1}}
    spec_path.write_text(yaml.safe_dump(data))
    start = time.time()
    with pytest.raises(RuntimeError, match=r"no node of the cluster can run a cell asking for .*no_such_accelerator 1"):
        run_sweep(load_spec(spec_path), tmp_path / "out", executor="ray", progress=False)
    assert time.time() - start < 30


def test_resource_typo_fails_dry_run(tmp_path, capsys):
    from rankrobust.cli import main

    spec_path = tiny_spec(tmp_path, losses=("sl",), ratios=(0.0,))
    data = yaml.safe_load(spec_path.read_text())
    data["options"]["resources"] = {"num_cpu": 2}
    spec_path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "options.resources.num_cpu is not a resource (did you mean 'num_cpus'?)" in err[0]


@pytest.mark.netns
def test_sigterm_stops_a_ray_sweep_cleanly_and_a_rerun_finishes_it(tmp_path):
    """SIGTERM to a Ray sweep driver: exit 143 with the resume line, finished cells kept, the rest run on resume."""
    spec_path = tiny_spec(tmp_path, losses=("sl", "bpr"), ratios=(0.0, 0.2), epochs=40)
    data = yaml.safe_load(spec_path.read_text())
    data["options"]["max_concurrent"] = 1  # one cell at a time: some finish, some are in flight or pending at the stop
    spec_path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rankrobust.cli", "sweep", str(spec_path), "--out", str(out), "--executor", "ray",
           "--quiet"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None and not any(
            (d / "status").exists() for d in (out / "runs").glob("*")):
        time.sleep(0.2)
    assert driver.poll() is None, driver.communicate()
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    finished = {d.name for d in (out / "runs").glob("*") if (d / "status").exists()
                and (d / "status").read_text().startswith("done")}
    assert 1 <= len(finished) < 4
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} already done, {4 - len(finished)} ran now, 0 failed" in rerun.stdout


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


def test_unmet_request_names_the_request_and_the_nodes():
    from rankrobust.sweeps.executors import unmet_request

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node does not count
    assert unmet_request({"num_cpus": 2, "num_gpus": 0}, nodes) is None
    line = unmet_request({"num_cpus": 1, "num_gpus": 0.25}, nodes)
    assert line == "no node of the cluster can run a cell asking for CPU 1, GPU 0.25 (nodes have: CPU 2, GPU 0)"
    assert "tpu 1" in unmet_request({"num_cpus": 1, "resources": {"tpu": 1}}, nodes)


def test_ray_start_failure_is_one_line(monkeypatch):
    from rankrobust.sweeps import executors

    class FakeRay:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError("raylet gave up waiting for the dashboard agent\nTraceback ...\n  30 more lines")

    monkeypatch.setattr(executors, "import_ray", lambda: FakeRay)
    with pytest.raises(executors.RayStartError) as err:
        executors.connect_ray("10.0.0.1:6379")
    text = str(err.value)
    assert "\n" not in text and "the cluster at 10.0.0.1:6379" in text and "dashboard agent" in text
    assert executors.RAY_LOGS in text
