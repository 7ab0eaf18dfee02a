"""The guest test's figures, printed in the terminal summary (visible without ``-s``)."""

from __future__ import annotations

from typing import Any

REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("guest (QEMU vfio-user-pci, unmodified idxd)")
        for line in REPORT:
            terminalreporter.write_line(line)
