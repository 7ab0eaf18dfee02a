"""Every ```python block of README.md runs, as written, against a real daemon process.

A block that is a whole program (it calls ``trio.run``) runs as it is; a snippet (top-level
``async with``) runs as the body of ``async def main()``, with ``trio``, ``siov`` and
``siov.dsa`` imported. ``$SIOV_SOCKET`` points both at the test's daemon, as the README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import DaemonProcess

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def python_blocks() -> list[str]:
    with open(README) as fh:
        text = fh.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def as_program(block: str) -> str:
    if "trio.run(" in block:
        return block
    body = textwrap.indent(block, "    ")
    head = "import trio\nimport siov\nfrom siov import dsa\n\n\nasync def main():\n"
    return f"{head}{body}\n\ntrio.run(main)\n"


def test_the_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(siovd_proc: DaemonProcess, index: int) -> None:
    program = as_program(python_blocks()[index])
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "SIOV_SOCKET": siovd_proc.path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, program + "\n" + done.stdout + done.stderr
