"""siovd as a real process: signals, sockets, config errors, siovctl."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from tests.conftest import DaemonProcess
from tests.daemonproc import spawn_siovd

SIOVCTL = [sys.executable, "-m", "siov.cli"]


def test_sigterm_exits_zero_and_removes_the_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "t.sock")
    proc = spawn_siovd(path)
    import siov

    with siov.BlockingClient(path) as client:
        assert client.ping() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not os.path.exists(path)
    logs = proc.log_entries()
    assert any(entry["event"] == "listening" and entry["socket"] == path for entry in logs)
    assert logs[-1]["event"] == "stopped"


def test_sigint_also_stops_cleanly(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "i.sock")
    proc = spawn_siovd(path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    # a bound socket and no listener: the subject is the stale socket file it leaves
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    proc = spawn_siovd(path)
    try:
        out = subprocess.run([*SIOVCTL, "--socket", path, "ping"], capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_live_daemon_is_not_replaced(siovd_proc: DaemonProcess) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "siovd",
            "--socket",
            siovd_proc.path,
            "--state-dir",
            siovd_proc.path + ".s2",
        ],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert b"another daemon is listening" in out.stderr
    assert os.path.exists(siovd_proc.path)


def test_socket_mode_comes_from_config(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "m.sock")
    proc = spawn_siovd(path)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o660
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_config_is_one_line_and_exit_2(sock_dir: str) -> None:
    cfg = os.path.join(sock_dir, "bad.toml")
    for text, words in [
        ("[server]\nsocket_mode = 'x'\n", "server.socket_mode: expected an integer, got str"),
        ("[server]\nsockt = 1\n", "server.sockt: unknown field"),
        ("[log]\nlevel = 'loud'\n", "log.level: 'loud' is not one of"),
        ("[limits\n", "not valid TOML"),
    ]:
        with open(cfg, "w") as fh:
            fh.write(text)
        out = subprocess.run(
            [sys.executable, "-m", "siovd", "--config", cfg], capture_output=True, timeout=30
        )
        assert out.returncode == 2
        lines = out.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines


def test_print_config_shows_the_effective_config(sock_dir: str) -> None:
    cfg = os.path.join(sock_dir, "c.toml")
    with open(cfg, "w") as fh:
        fh.write("[iommu]\niotlb_entries = 1024\n")
    out = subprocess.run(
        [sys.executable, "-m", "siovd", "--config", cfg, "--socket", "/x.sock", "--print-config"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["iommu"]["iotlb_entries"] == 1024
    assert data["server"]["socket"] == "/x.sock"
    assert data["protocol"]["max_msg_size"] == 1 << 20


def test_siovctl_info_ping_stats(siovd_proc: DaemonProcess) -> None:
    base = [*SIOVCTL, "--socket", siovd_proc.path]
    out = subprocess.run([*base, "info"], capture_output=True, timeout=30, text=True)
    assert out.returncode == 0 and "version" in out.stdout and "uptime_s" in out.stdout
    out = subprocess.run([*base, "--json", "info"], capture_output=True, timeout=30, text=True)
    assert json.loads(out.stdout)["socket"] == siovd_proc.path
    out = subprocess.run([*base, "ping", "-c", "5"], capture_output=True, timeout=30, text=True)
    assert out.returncode == 0 and "median_us" in out.stdout
    out = subprocess.run([*base, "--json", "stats"], capture_output=True, timeout=30, text=True)
    assert "daemon" in json.loads(out.stdout)


def test_siovctl_without_daemon_fails_in_one_line(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "absent.sock")
    out = subprocess.run(
        [*SIOVCTL, "--socket", path, "info"], capture_output=True, timeout=30, text=True
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to siovd" in lines[0]


def test_sighup_reloads_what_can_change(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "h.sock")
    cfg = os.path.join(sock_dir, "h.toml")
    with open(cfg, "w") as fh:
        fh.write("[limits]\nevent_queue = 10\n")
    proc = spawn_siovd(path, "--config", cfg)
    try:
        with open(cfg, "w") as fh:
            fh.write(
                "[limits]\nevent_queue = 20\n[log]\nlevel = 'debug'\n[iommu]\niotlb_entries = 64\n"
            )
        proc.send_signal(signal.SIGHUP)
        entry = proc.next_log("config reloaded")
        assert entry["changed"] == {
            "limits.event_queue": {"old": 10, "new": 20},
            "log.level": {"old": "info", "new": "debug"},
        }
        assert entry["needs_restart"] == ["iommu.iotlb_entries"]
        with open(cfg, "w") as fh:
            fh.write("[limits\n")
        proc.send_signal(signal.SIGHUP)
        entry = proc.next_log("reload failed, keeping the running config")
        assert "not valid TOML" in str(entry["error"])
        out = subprocess.run([*SIOVCTL, "--socket", path, "ping"], capture_output=True, timeout=30)
        assert out.returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)
