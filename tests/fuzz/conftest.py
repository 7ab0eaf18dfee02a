"""Fuzz run size, and a summary line of what the fuzzers did at the end of the session.

``SIOV_FUZZ_FRAMES`` sets the total frames of the frame fuzzers (default 100,000, the CI
size); ``SIOV_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import os
from typing import Any

FRAMES = int(os.environ.get("SIOV_FUZZ_FRAMES", "100000"))
SEED = int(os.environ.get("SIOV_FUZZ_SEED", "20260"))

#: One line per fuzz test, printed in the terminal summary (visible without ``-s``), and the
#: frames each sent.
SUMMARY: list[str] = []
SENT: list[int] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("siov fuzz")
        for line in SUMMARY:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"frames fuzzed in all: {sum(SENT)} (seed {SEED})")
