"""siovd as a subprocess whose log goes to a file, and what a test can read of it from /proc.

A daemon's stderr on a pipe that nobody reads fills after 64 KiB of log and then stalls the
daemon; hostile tests make many connections (each logs), so they use this instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.conftest import _answers


@dataclass
class LoggedDaemon:
    path: str
    proc: subprocess.Popen[bytes]
    log_path: str
    dir: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_entries(self) -> list[dict[str, Any]]:
        out = []
        with open(self.log_path) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("{"):
                    out.append(json.loads(line))
        return out

    def failures_logged(self) -> list[dict[str, Any]]:
        """Log entries that mean a bug: a handler or a connection task that raised."""
        bad = ("handler failed", "connection failed", "release failed")
        return [e for e in self.log_entries() if e.get("event") in bad or e.get("exception")]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def memfd_maps(self) -> int:
        with open(f"/proc/{self.pid}/maps") as fh:
            return sum("memfd:" in line for line in fh)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextmanager
def logged_siovd(
    config: str = "", *args: str, setup: Callable[[str], str] | None = None
) -> Iterator[LoggedDaemon]:
    """Run siovd with ``config`` (TOML text) until the block ends.

    ``setup(tmpdir)`` may write files first and return more TOML to append.
    """
    with tempfile.TemporaryDirectory(prefix="siov-", dir="/tmp") as tmp:
        if setup is not None:
            config += "\n" + setup(tmp)
        cfg = os.path.join(tmp, "siovd.toml")
        with open(cfg, "w") as fh:
            fh.write(config + "\n")
        path = os.path.join(tmp, "d.sock")
        log_path = os.path.join(tmp, "siovd.log")
        argv = [sys.executable, "-m", "siovd", "--socket", path, "--config", cfg]
        argv += ["--log-format", "json", "--state-dir", os.path.join(tmp, "state"), *args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not _answers(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                with open(log_path) as fh:
                    raise RuntimeError(f"siovd did not start: {fh.read()}")
            time.sleep(0.02)
        try:
            yield LoggedDaemon(path, proc, log_path, tmp)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
