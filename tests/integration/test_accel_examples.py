"""The examples in clients/examples run against a real daemon process and check themselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DaemonProcess

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "clients", "examples")


@pytest.mark.parametrize("example", ["dsa_app.py", "emulator.py"])
def test_example_runs_and_checks_itself(siovd_proc: DaemonProcess, example: str) -> None:
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, example), "--socket", siovd_proc.path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert "FAIL" not in done.stdout
