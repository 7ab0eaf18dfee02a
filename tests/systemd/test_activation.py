"""siovd.host.systemd against systemd's own socket activation (``systemd-socket-activate``)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .test_units import tool

pytestmark = pytest.mark.systemd

CHILD = Path(__file__).parents[1] / "unit" / "service_activation_child.py"


def test_listen_fds_takes_systemds_socket(tmp_path: Path) -> None:
    path = tmp_path / "siovd.sock"
    activator = subprocess.Popen(
        [
            tool("systemd-socket-activate"),
            f"--listen={path}",
            "--fdname=siovd",
            sys.executable,
            str(CHILD),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert activator.stderr is not None and activator.stdout is not None
        # It reports "Listening on PATH as 3." once the socket accepts connections.
        line = activator.stderr.readline()
        assert line.startswith("Listening on"), line
        # a plain socket: the activated child greets in bytes and speaks no siov protocol
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # this first connection starts the child
            assert client.recv(100) == b"hello from siovd"
        report = json.loads(activator.stdout.read())
        assert activator.wait(timeout=60) == 0
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()
    assert report["pid"] == activator.pid  # systemd-socket-activate execs in place
    assert report["fds"] == [[3, "siovd"]]
    assert report["inheritable"] == [False]
    assert report["env_left"] == []
