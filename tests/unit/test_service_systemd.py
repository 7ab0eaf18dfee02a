"""siovd.host.systemd: socket activation, sd_notify and the watchdog, against real sockets."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from siovd.host.systemd import (
    ActivationError,
    ListenFd,
    Notifier,
    listen_fds,
    state_directory,
    stream_listener,
    watchdog_interval,
)

CHILD = Path(__file__).with_name("service_activation_child.py")


# ---- listen_fds: a real activated child ------------------------------------------------------


def spawn_activated(
    passed: list[socket.socket], names: str | None, count: int | None = None
) -> tuple[int, int]:
    """Fork and exec the child the way systemd does: fds from 3, LISTEN_PID = the child's pid.

    Returns (pid, read end of the child's stdout).
    """
    # Move the sockets out of the 3..3+n range first so dup2 never overwrites one of them.
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for s in passed]
    out_r, out_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env["LISTEN_FDS"] = str(len(passed) if count is None else count)
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe-ish work until exec
        try:
            os.dup2(out_w, 1)
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i, inheritable=True)
            env["LISTEN_PID"] = str(os.getpid())
            os.execve(sys.executable, [sys.executable, str(CHILD)], env)
        finally:
            os._exit(127)
    os.close(out_w)
    for fd in high:
        os.close(fd)
    return pid, out_r


def finish(pid: int, out_r: int) -> dict[str, object]:
    with os.fdopen(out_r, "rb") as out:
        data = out.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    report: dict[str, object] = json.loads(data)
    return report


@pytest.fixture
def sock_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # sun_path is 108 bytes: keep it short.
    yield tmp_path_factory.mktemp("act")


def test_listen_fds_in_an_activated_process(sock_dir: Path) -> None:
    path = str(sock_dir / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with listener, datagram:
        pid, out_r = spawn_activated([listener, datagram], "siovd:other")
        # a plain socket: the activated child greets in bytes and speaks no siov protocol
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            greeting = client.recv(100)
        report = finish(pid, out_r)
    assert greeting == b"hello from siovd"
    assert report["pid"] == pid
    assert report["fds"] == [[3, "siovd"], [4, "other"]]
    assert report["inheritable"] == [False, False]  # FD_CLOEXEC set
    assert report["env_left"] == []
    listeners = report["listeners"]
    assert isinstance(listeners, dict)
    assert listeners["siovd"] == "served"
    assert "AF_UNIX/SOCK_DGRAM" in listeners["other"]
    assert "needs a listening AF_UNIX stream socket" in listeners["other"]


def test_listen_fds_without_names_calls_them_unknown(sock_dir: Path) -> None:
    path = str(sock_dir / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    with listener:
        pid, out_r = spawn_activated([listener], None)
        # a plain socket: the activated child greets in bytes and speaks no siov protocol
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            assert client.recv(100) == b"hello from unknown"
        report = finish(pid, out_r)
    assert report["fds"] == [[3, "unknown"]]


def test_listen_fds_names_a_missing_fd() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("")  # autobind: an abstract address
        listener.listen()
        pid, out_r = spawn_activated([listener], "siovd:ghost", count=2)
        report = finish(pid, out_r)
    assert report == {
        "error": "passed fd 4 (ghost) is not open: Bad file descriptor",
        "env_left": [],
    }


# ---- listen_fds: the environment rules (no fd is touched in these) ---------------------------


def test_not_activated() -> None:
    env: dict[str, str] = {}
    assert listen_fds(env) == []


def test_variables_for_another_process_are_ignored_and_cleared() -> None:
    env = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "X": "1"}
    assert listen_fds(env) == []
    assert env == {"X": "1"}


def test_variables_kept_on_request() -> None:
    env = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1"}
    assert listen_fds(env, unset_environment=False) == []
    assert "LISTEN_PID" in env


def test_zero_fds() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert listen_fds(env) == []
    assert env == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "$LISTEN_PID='abc' is not a decimal number"),
        ({"LISTEN_FDS": "-1"}, "$LISTEN_FDS='-1' is negative"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"}, "has 1 names for $LISTEN_FDS=2"),
    ],
)
def test_malformed_variables(env: dict[str, str], message: str) -> None:
    env.setdefault("LISTEN_PID", str(os.getpid()))
    with pytest.raises(ActivationError) as info:
        listen_fds(env)
    assert message in str(info.value)
    assert env == {}  # cleared even on error


def test_listen_fd_is_a_pair() -> None:
    fd, name = ListenFd(3, "siovd")
    assert (fd, name) == (3, "siovd")


def test_stream_listener_refuses_a_connected_stream() -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ActivationError) as info:
            stream_listener(a.fileno())
        assert "AF_UNIX/SOCK_STREAM" in str(info.value)
        a.send(b"x")  # still open: the refusal did not close the caller's fd
        assert b.recv(1) == b"x"


def test_stream_listener_refuses_a_non_socket(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as fh, pytest.raises(ActivationError) as info:
        stream_listener(fh.fileno())
    assert "is not a socket" in str(info.value)


# ---- Notifier --------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(sock_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(sock_dir / "notify")
    sock.bind(path)
    sock.settimeout(10)
    with sock:
        yield path, sock


def test_notifier_sends_each_state(notify_socket: tuple[str, socket.socket]) -> None:
    path, receiver = notify_socket
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert receiver.recv(4096) == b"READY=1"
        assert notifier.status("serving 3 clients")
        assert receiver.recv(4096) == b"STATUS=serving 3 clients"
        assert notifier.watchdog()
        assert receiver.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping("draining\n2 connections")
        assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=draining 2 connections"
        assert notifier.ready(status="up")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
        assert notifier.notify("X_SIOV=1", "MAINPID=42")
        assert receiver.recv(4096) == b"X_SIOV=1\nMAINPID=42"


def test_notifier_abstract_socket() -> None:
    name = f"siov-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(10)
        with Notifier(f"@{name}") as notifier:
            assert notifier.ready()
            assert receiver.recv(4096) == b"READY=1"
            assert notifier.watchdog()
            assert receiver.recv(4096) == b"WATCHDOG=1"


def test_notifier_is_a_no_op_outside_systemd() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False


def test_notifier_errors_are_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with capture_logs() as logs:
        assert notifier.ready() is False
    notifier.close()
    assert logs == [
        {
            "event": "sd_notify failed",
            "log_level": "warning",
            "notify_socket": str(tmp_path / "nobody-listens"),
            "message": "READY=1",
            "error": "No such file or directory",
        }
    ]


def test_notifier_unsupported_address_is_logged_and_disabled() -> None:
    with capture_logs() as logs:
        notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert logs[0]["event"] == "notify socket not supported"


def test_notifier_rejects_a_bogus_assignment(notify_socket: tuple[str, socket.socket]) -> None:
    path, _ = notify_socket
    with Notifier(path) as notifier:
        with pytest.raises(ValueError):
            notifier.notify("READY")
        with pytest.raises(ValueError):
            notifier.notify("STATUS=a\nREADY=1")


# ---- watchdog and directories ----------------------------------------------------------------


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 15.0


def test_watchdog_for_another_process_or_none() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_malformed() -> None:
    with pytest.raises(ActivationError):
        watchdog_interval({"WATCHDOG_USEC": "30s"})


def test_state_directory() -> None:
    assert state_directory({}) is None
    assert state_directory({"STATE_DIRECTORY": "/var/lib/siovd"}) == Path("/var/lib/siovd")
    assert state_directory({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a")
