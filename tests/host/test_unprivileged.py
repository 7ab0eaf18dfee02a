"""siov-run without root: a user namespace (the caller's uid mapped to root inside) and a
mount namespace of its own, FUSE mounted there through /dev/fuse. Checked by running siovd
and siov-run as ``nobody``: accel-config lists the device and dsa_test completes a MEMMOVE.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.daemonproc import spawn_siovd
from tests.host.conftest import DSA_TEST, require_host

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def test_siov_run_as_nobody() -> None:
    require_host()
    if shutil.which("setpriv") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("setpriv (util-linux) is missing")
        pytest.skip("needs setpriv (util-linux)")
    with tempfile.TemporaryDirectory(prefix="siov-nobody-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o777)
        path = os.path.join(tmp, "d.sock")
        state = os.path.join(tmp, "state")
        log_path = os.path.join(tmp, "siovd.log")
        daemon = spawn_siovd(path, "--state-dir", state, log_path=log_path, wrapper=NOBODY)
        try:
            out = subprocess.run(
                [
                    *NOBODY,
                    sys.executable,
                    "-m",
                    "siov_host.run",
                    "--socket",
                    path,
                    "--",
                    "sh",
                    "-c",
                    f"accel-config list >/dev/null && {DSA_TEST} -w 0 -o 3 -l 4096",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "HOME": tmp},
            )
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            assert "verifying task result" in out.stdout
        finally:
            daemon.terminate()
            daemon.wait(10)
