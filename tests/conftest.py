"""Shared fixtures: a daemon in the test's own nursery (start_daemon, siovd), or as a process
(siovd_proc, through tests.daemonproc.spawn_siovd)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

# Every daemon the tests run checks each reply against its schema (siovd.service.server).
os.environ["SIOVD_CHECK_REPLIES"] = "1"

from siovd.host import config as siovd_config
from siovd.service.daemon import Daemon
from siovd.service.server import Server, bind_unix_socket
from tests.daemonproc import SiovdProcess, spawn_siovd


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


@dataclass
class DaemonProcess:
    path: str
    proc: SiovdProcess


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` a skipped test is a failed one: CI runs as root with every package
    .ci/run installs, so whatever a test skips for elsewhere (root, unshare, FUSE, QEMU) is
    there, and a skip would count a test that never ran as passing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where it must run: {reason}"


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
