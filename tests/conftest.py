"""Shared fixtures: a daemon in the test's own nursery, raw frame helpers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from siovd.host import config as siovd_config
from siovd.service.daemon import Daemon
from siovd.service.server import Server, bind_unix_socket


@dataclass
class RunningDaemon:
    path: str
    daemon: Daemon
    server: Server


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Unix socket paths are limited to 108 bytes: keep them short.
    with tempfile.TemporaryDirectory(prefix="siov-", dir="/tmp") as tmp:
        yield tmp


def make_config(**sections: dict[str, Any]) -> siovd_config.Config:
    return siovd_config.from_dict(sections)


async def start_daemon(
    nursery: trio.Nursery, path: str, cfg: siovd_config.Config | None = None
) -> RunningDaemon:
    cfg = cfg or make_config()
    state = os.path.join(os.path.dirname(path), "state-" + os.path.basename(path))
    daemon = Daemon(cfg, path, state_dir=state)
    nursery.start_soon(_close_at_exit, daemon)
    server = Server(daemon)
    listener = bind_unix_socket(path, 0o600)
    await nursery.start(server.serve, listener)
    return RunningDaemon(path, daemon, server)


async def _close_at_exit(daemon: Daemon) -> None:
    try:
        await trio.sleep_forever()
    finally:
        daemon.close()


@pytest.fixture
async def siovd(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[RunningDaemon]:
    running = await start_daemon(nursery, os.path.join(sock_dir, "d.sock"))
    yield running
    running.server.nursery.cancel_scope.cancel()


def _answers(path: str) -> bool:
    """Whether a daemon serves ``path``. The probe's connection is over, on the daemon's side
    too, when this returns True: it half-closes and waits for the daemon's close, so a test's
    baseline (fds, counts) taken next never includes the probe."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
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


@dataclass
class DaemonProcess:
    path: str
    proc: Any  # subprocess.Popen[bytes]


def spawn_siovd(path: str, *args: str, env: dict[str, str] | None = None) -> Any:
    import subprocess
    import sys
    import time

    if "--state-dir" not in args:
        args = ("--state-dir", path + ".state", *args)
    proc = subprocess.Popen(
        [sys.executable, "-m", "siovd", "--socket", path, "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 20
    while not _answers(path):
        if proc.poll() is not None:
            raise RuntimeError(f"siovd exited: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("siovd did not start in 20 s")
        time.sleep(0.02)
    return proc


@pytest.fixture(scope="module")
def siovd_proc() -> Iterator[DaemonProcess]:
    """A real siovd subprocess shared by a module's tests (they must leave it healthy)."""
    with tempfile.TemporaryDirectory(prefix="siov-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "d.sock")
        proc = spawn_siovd(path)
        try:
            yield DaemonProcess(path, proc)
        finally:
            proc.terminate()
            proc.wait(10)


# ---- figures in the test summary -----------------------------------------------------------

FIGURE_LINES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report_figure(line)``: print ``line`` in the summary at the end of the run (the
    hostile-world tests report what the bystander measured this way)."""
    lines = request.config.stash.setdefault(FIGURE_LINES, [])
    return lines.append


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURE_LINES, [])
    if lines:
        terminalreporter.section("hostile-world figures")
        for line in lines:
            terminalreporter.write_line(line)
