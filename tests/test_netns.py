"""The tests that start servers, run inside a loopback-only network namespace (tests/loopback.py).

One inner pytest session runs every test marked ``netns`` (Ray heads and
workers, Ray Tune, HTTP mirrors) in a namespace whose only interface is
``lo``, so none of them can send a packet to another address.  Its failures
fail this test, with the inner session's report.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests import loopback
from tests.conftest import REPO

#: the inner session's limit (Ray start-up and a few small sweeps)
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def namespace():
    if loopback.inside():
        pytest.skip("already inside the loopback-only namespace")
    if loopback.on_host_allowed():
        pytest.skip(f"{loopback.ON_HOST}=1: the netns tests ran in this session, on the host's network")
    problem = loopback.namespace_problem()
    if problem:
        pytest.skip(f"no loopback-only network namespace: {problem}; set {loopback.ON_HOST}=1 to run the "
                    f"server tests on the host's network instead")


def run_inside(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python args`` in a new loopback-only namespace, from the repository root; killed whole on timeout."""
    proc = subprocess.Popen(loopback.command(args), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the loopback-namespace session ran past {timeout} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_namespace_has_only_loopback(namespace):
    """The namespace the server tests get: interface lo only, up, and 127.0.0.1 reachable on it."""
    code = ("import socket; from tests import loopback; "
            "assert loopback.inside(), 'not inside'; print(loopback.interfaces()); "
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            "c = socket.create_connection(s.getsockname(), timeout=5); print('connected')")
    done = run_inside(["-c", code], timeout=60)
    assert done.returncode == 0, done.stdout
    assert "['lo']" in done.stdout and "connected" in done.stdout


def test_server_tests_pass_in_the_loopback_namespace(namespace):
    """Every ``netns`` test, in one inner session inside the namespace, passes (or skips for its own reason)."""
    done = run_inside(["-m", "pytest", "-q", "-m", "netns", "-p", "no:cacheprovider", "-rs", "tests"],
                      timeout=TIMEOUT_S)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode == 5:
        pytest.skip("no test is marked netns")
    assert done.returncode == 0, f"netns tests failed inside the namespace ({summary}):\n{done.stdout[-12000:]}"
    print(summary)
