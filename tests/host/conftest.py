"""Fixtures for the host view: a siovd subprocess and a way to run commands under siov-run.

These tests run Intel's own binaries (accel-config, dsa_test) and need root (a private mount
namespace), /dev/fuse, pyfuse3 and the Debian packages that .ci/run installs. Elsewhere they
skip with the reason; under CI=true a missing piece is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.daemonproc import LoggedDaemon, logged_siovd

TESTDIR = "/usr/libexec/accel-config/test"
DSA_TEST = f"{TESTDIR}/dsa_test"
CONFIG1 = f"{TESTDIR}/configs/2g2q_user_1.conf"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace and FUSE mounts)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    if importlib.util.find_spec("pyfuse3") is None:
        return "needs pyfuse3 (pip install siov[host])"
    if shutil.which("accel-config") is None or not os.path.exists(DSA_TEST):
        return "needs the accel-config and accel-config-test packages"
    return None


def require_host() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"host view tests cannot run: {reason}")
    pytest.skip(reason)


@dataclass
class HostDaemon:
    daemon: LoggedDaemon

    @property
    def path(self) -> str:
        return self.daemon.path

    def run(
        self, script: str, *, timeout: float = 120, args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``siov-run --socket PATH -- bash -c SCRIPT``, output captured as text."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "siov_host.run",
                "--socket",
                self.path,
                *args,
                "--",
                "bash",
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def host_daemon() -> Iterator[HostDaemon]:
    require_host()
    with logged_siovd() as daemon:
        yield HostDaemon(daemon)
        assert daemon.failures_logged() == []
