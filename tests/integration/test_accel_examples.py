"""The examples in clients/examples run against a real daemon process and check themselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DaemonProcess

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "clients", "examples")


#: Each example and lines its output must hold (besides "all checks passed" and no FAIL): the
#: issue-18 programs print what they checked, so a check that silently stopped running shows.
EXPECTED = {
    "dsa_app.py": ["MEMMOVE 4 MiB", "AP_DELTA makes the copy equal"],
    "emulator.py": [
        "ok   the emulator is told its device was claimed, and by whom",
        "ok   each run names its leaf size (a 2 MiB page here)",
        "ok   a failed TRANSLATE answers the emulator with the reason",
        "ok   the owner receives one fault record, the DMA's (not the TRANSLATE's)",
        "ok   the emulator is told of the release",
    ],
    "driver_test.py": [
        "ok   the batch completed all 32",
        "ok   each CRCGEN matches the reference CRC-32C",
        "ok   the IOTLB caches the data as two 2 MiB entries",
        "partial completion: status DSA_COMP_PAGE_FAULT_NOBOF, bytes_completed 0x200000, "
        "fault_addr 0x40200000",
        "ok   EVENT_FAULT names the descriptor (its record, opcode, WQ)",
        "ok   the resumed remainder gives the CRC of all 4 MiB",
    ],
    "pasid_scenario.py": [
        "ok   PASID 5 writes the per-PASID domain's buffer",
        "ok   the replace dropped the old PASID entry's IOTLB entries",
        "ok   after REPLACE_PASID, PASID 5 writes the third domain's buffer",
        "ok   no stale translation: the second buffer is untouched",
        "ok   a detached PASID's work fails fast (RecordNotWritten)",
    ],
}


def test_every_example_is_run() -> None:
    assert sorted(EXPECTED) == sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))


@pytest.mark.parametrize("example", sorted(EXPECTED))
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
    for line in EXPECTED[example]:
        assert line in done.stdout, (line, done.stdout)
