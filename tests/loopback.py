"""Run tests that start servers (Ray, HTTP mirrors) inside a loopback-only network namespace.

The project's tests may send traffic only to 127.0.0.1 / ::1.  Ray does not
respect that on its own: a head binds the machine's routable address even when
told 127.0.0.1, and its dashboard process asks the cloud metadata address
169.254.169.254 before it reads ``RAY_USAGE_STATS_ENABLED``.  So every test
that starts a server is marked ``@pytest.mark.netns`` and runs in a network
namespace whose only interface is ``lo``: nothing it does can reach another
address, whatever the library tries.

How (Linux): ``unshare -n`` as root, ``unshare -rn`` (a user namespace mapping
the caller to root) otherwise; inside, this file brings ``lo`` up (an ioctl,
no iproute2 needed), checks that ``lo`` is the only interface, sets
``RANKROBUST_IN_LOOPBACK_NETNS=1`` and replaces itself with the command it was
given (``python tests/loopback.py -m pytest ...`` runs ``python -m pytest ...``).  The outer test session
skips the ``netns`` tests (`tests/conftest.py`) and `tests/test_netns.py` runs
them all, in one inner session, inside the namespace.

Where no namespace can be made (not Linux, no ``unshare``, user namespaces
disabled) the ``netns`` tests skip with a one-line reason, unless
``RANKROBUST_RAY_TESTS_ON_HOST_NETWORK=1`` says to run them on the host's
network, in the outer session.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

#: set (to "1") only by this file, inside a namespace it has checked to be loopback-only
INSIDE = "RANKROBUST_IN_LOOPBACK_NETNS"
#: set by the user to run the ``netns`` tests on the host's network where no namespace can be made
ON_HOST = "RANKROBUST_RAY_TESTS_ON_HOST_NETWORK"

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def inside() -> bool:
    """True in a session started by this file inside a loopback-only namespace."""
    return os.environ.get(INSIDE) == "1"


def on_host_allowed() -> bool:
    return os.environ.get(ON_HOST) == "1"


def unshare_command() -> list[str]:
    """The ``unshare`` prefix that makes a new network namespace for this user."""
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


def namespace_problem() -> str | None:
    """None when a loopback-only namespace can be made here, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    probe = subprocess.run(unshare_command() + ["--", sys.executable, __file__, "--check"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"`{' '.join(unshare_command())}` failed here: {last}"
    return None


def command(python_args: list[str]) -> list[str]:
    """``python python_args`` (this interpreter) run inside a new loopback-only network namespace."""
    return unshare_command() + ["--", sys.executable, __file__, *python_args]


def bring_up_loopback() -> None:
    """Set the IFF_UP flag of ``lo`` (what ``ip link set lo up`` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def interfaces() -> list[str]:
    """Names of this namespace's network interfaces."""
    return sorted(name for _, name in socket.if_nameindex())


def main(argv: list[str]) -> int:
    """Inside a fresh namespace: bring ``lo`` up, refuse anything but ``lo``, then exec ``python argv``
    (``--check``: only the first two steps)."""
    bring_up_loopback()
    names = interfaces()
    if names != ["lo"]:
        print(f"loopback.py: this namespace has interfaces {names}, not only lo; refusing to run", file=sys.stderr)
        return 3
    if argv == ["--check"]:
        return 0
    os.environ[INSIDE] = "1"
    os.execv(sys.executable, [sys.executable, *argv])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
