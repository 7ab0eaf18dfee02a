"""Summary lines integration tests leave for the end of the session (the load figures)."""

from __future__ import annotations

from typing import Any

#: Section title -> lines, printed in the terminal summary (visible without ``-s``).
REPORT: dict[str, list[str]] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in REPORT.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
