"""The C example client, built against <linux/idxd.h> (linux-libc-dev), libmsgpack
(libmsgpack-dev) and protocol/include/siov.h, runs MEMMOVE, CRCGEN, a batch and a fault
against a live daemon and checks each result itself (.ci/run installs the packages)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "clients" / "examples" / "c" / "dsa_client.c"


def test_c_example_builds_and_passes(siovd_proc: DaemonProcess, tmp_path: Path) -> None:
    binary = tmp_path / "dsa_client"
    flags = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"]
    include = ["-I", str(ROOT / "protocol" / "include")]
    build = subprocess.run(
        ["gcc", *flags, *include, str(SOURCE), "-lmsgpackc", "-o", str(binary)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    done = subprocess.run(
        [str(binary), siovd_proc.path], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("MEMMOVE: ok", "CRCGEN: ok (0xe3069283)", "BATCH: ok", "fault: ok"):
        assert step in done.stdout, done.stdout
    assert "EVENT_FAULT iova 0x800000 reason 0x71" in done.stdout
    assert "all checks passed" in done.stdout and "FAIL" not in done.stdout
