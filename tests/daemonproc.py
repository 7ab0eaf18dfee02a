"""The tests' one way to run siovd as a process: :func:`spawn_siovd` (and :func:`logged_siovd`
around it, with a config file and a private directory).

The daemon's stdout and stderr go to a log file, never to a pipe: a pipe that nobody reads
fills after 64 KiB of log and then stalls the daemon, and DEVNULL would hide why it failed.
Tests read the JSON log with :meth:`SiovdProcess.log_entries` and
:meth:`SiovdProcess.next_log`, and what /proc says of the process with :class:`LoggedDaemon`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.helpers import settle


def answers(path: str) -> bool:
    """Whether a daemon serves ``path``. The probe's connection is over, on the daemon's side
    too, when this returns True: it half-closes and waits for the daemon's close, so a test's
    baseline (fds, counts) taken next never includes the probe."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # bare: it half-closes, says nothing
    try:
        probe.connect(path)
    except OSError:
        probe.close()
        return False
    try:
        probe.settimeout(10)
        probe.shutdown(socket.SHUT_WR)
        while probe.recv(4096):
            pass
    except OSError:
        pass  # it answered: that is all a probe asks
    finally:
        probe.close()
    return True


def read_log(log_path: str) -> list[dict[str, Any]]:
    """The JSON entries of a daemon's log file (other lines, such as a traceback, skipped)."""
    out = []
    with open(log_path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


class SiovdProcess(subprocess.Popen[bytes]):
    """A siovd process whose log goes to ``log_path``."""

    def __init__(
        self,
        argv: list[str],
        log_path: str,
        env: dict[str, str] | None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.log_path = log_path
        self._seen = 0  # log entries next_log has looked at
        with open(log_path, "ab") as log:
            super().__init__(argv, stdout=log, stderr=log, env=env, pass_fds=pass_fds)

    def log_text(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def log_entries(self) -> list[dict[str, Any]]:
        return read_log(self.log_path)

    def next_log(self, event: str, timeout: float = 15) -> dict[str, Any]:
        """The next entry (after those seen by earlier calls) whose event is ``event``."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            entries = self.log_entries()
            for index in range(self._seen, len(entries)):
                if entries[index].get("event") == event:
                    self._seen = index + 1
                    found.append(entries[index])
                    return True
            self._seen = len(entries)
            return False

        settle(arrived, f"a {event!r} log line", timeout)
        return found[0]


def spawn_siovd(
    path: str,
    *args: str,
    env: dict[str, str] | None = None,
    log_path: str | None = None,
    wrapper: Sequence[str] = (),
) -> SiovdProcess:
    """Start ``siovd --socket path`` (JSON log to ``log_path``, default ``path + ".log"``;
    state in ``path + ".state"`` unless ``--state-dir`` is given) and wait until it answers.
    ``wrapper`` is a command that execs the rest, such as ``setpriv`` to run it as another
    user."""
    if "--state-dir" not in args:
        args = ("--state-dir", path + ".state", *args)
    siovd = [sys.executable, "-m", "siovd", "--socket", path, "--log-format", "json", *args]
    argv = [*wrapper, *siovd]
    proc = SiovdProcess(argv, log_path or path + ".log", env)
    deadline = time.monotonic() + 20
    while not answers(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"siovd did not start:\n{proc.log_text()}")
        time.sleep(0.02)
    return proc


@dataclass
class LoggedDaemon:
    path: str
    proc: SiovdProcess
    log_path: str
    dir: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_entries(self) -> list[dict[str, Any]]:
        return read_log(self.log_path)

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
        state = os.path.join(tmp, "state")
        proc = spawn_siovd(path, "--config", cfg, "--state-dir", state, *args, log_path=log_path)
        try:
            yield LoggedDaemon(path, proc, log_path, tmp)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
