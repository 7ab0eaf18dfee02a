"""siovd as a system service: socket activation, sd_notify, watchdog, authentication,
persistent definitions across restarts and crashes, and a clean shutdown."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import siov
from siov.keys import generate_keypair, public_key_line
from siov_protocol import Command
from tests.daemonproc import SiovdProcess, spawn_siovd
from tests.helpers import settle
from tests.rawclient import RawClient

SIOVCTL = [sys.executable, "-m", "siov.cli"]


# ---- socket activation and sd_notify ---------------------------------------------------------


def _activated(path: str, sock_dir: str, env: dict[str, str]) -> SiovdProcess:
    """Start siovd the way systemd does: the listening socket at fd 3, LISTEN_* set."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    launcher = textwrap.dedent(
        """
        import os, sys
        os.dup2(int(sys.argv[1]), 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        os.environ["LISTEN_FDNAMES"] = "siovd"
        os.execv(sys.executable, [sys.executable, "-m", "siovd", *sys.argv[2:]])
        """
    )
    proc = SiovdProcess(
        [
            sys.executable,
            "-c",
            launcher,
            str(listener.fileno()),
            "--log-format",
            "json",
            "--socket",
            os.path.join(sock_dir, "unused.sock"),
            "--state-dir",
            os.path.join(sock_dir, "state"),
        ],
        os.path.join(sock_dir, "act.log"),
        {**os.environ, **env},
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    return proc


def test_socket_activation_serves_the_inherited_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "act.sock")
    proc = _activated(path, sock_dir, {})
    try:
        with siov.BlockingClient(path) as client:
            info = client.info()
            assert info.socket == path
            assert info.pid == proc.pid
        assert not os.path.exists(os.path.join(sock_dir, "unused.sock"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert os.path.exists(path)  # systemd owns the inherited socket file: left in place
        log = proc.log_entries()
        assert any(e["event"] == "listening" and e["activated"] is True for e in log)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd")
def test_systemd_socket_activate_starts_siovd_on_first_connection(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "sa.sock")
    proc = SiovdProcess(
        [
            "systemd-socket-activate",
            "-l",
            path,
            "--fdname=siovd",
            sys.executable,
            "-m",
            "siovd",
            "--state-dir",
            os.path.join(sock_dir, "state"),
            "--log-format",
            "json",
        ],
        os.path.join(sock_dir, "sa.log"),  # not DEVNULL: a failure shows the daemon's log
        None,
    )
    try:
        try:
            settle(lambda: os.path.exists(path), f"{path} appears", 15)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the daemon logged:\n{proc.log_text()}") from None
        out = subprocess.run(
            [*SIOVCTL, "--socket", path, "--json", "info"],
            capture_output=True,
            timeout=60,
            text=True,
        )
        assert out.returncode == 0, (out.stderr, proc.log_text())
        assert json.loads(out.stdout)["socket"] == path
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture
def notify_socket(sock_dir: str) -> Iterator[tuple[socket.socket, str]]:
    path = os.path.join(sock_dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket, until: str) -> list[str]:
    seen: list[str] = []
    while True:
        data = sock.recv(4096).decode()
        seen.extend(data.splitlines())
        if any(line.startswith(until) for line in data.splitlines()):
            return seen


def test_sd_notify_ready_watchdog_and_stopping(
    sock_dir: str, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, notify_path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}
    path = os.path.join(sock_dir, "n.sock")
    proc = spawn_siovd(path, env=env)
    try:
        seen = _messages(sock, "READY=1")
        assert any(line.startswith("STATUS=listening on") for line in seen)
        pings = 0
        while pings < 3:  # every 0.1 s: half of WATCHDOG_USEC, from the event loop
            if "WATCHDOG=1" in _messages(sock, "WATCHDOG=1"):
                pings += 1
        proc.send_signal(signal.SIGTERM)
        _messages(sock, "STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_clients_get_a_shutdown_event(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "sd.sock")
    proc = spawn_siovd(path)
    with siov.BlockingClient(path) as client:
        client.ping()
        proc.send_signal(signal.SIGTERM)
        event = client.next_event(timeout=15)
        assert event.command == Command.EVENT_SHUTDOWN and event.body["grace_s"] > 0
    assert proc.wait(15) == 0


# ---- authentication ---------------------------------------------------------------------------


@pytest.fixture
def key_daemon(sock_dir: str) -> Iterator[tuple[str, str, str]]:
    admin_key = os.path.join(sock_dir, "admin")
    user_key = os.path.join(sock_dir, "user")
    stranger_key = os.path.join(sock_dir, "stranger")
    keys = os.path.join(sock_dir, "authorized_keys")
    with open(keys, "w") as fh:
        fh.write("role=admin " + public_key_line(generate_keypair(admin_key), "alice") + "\n")
        fh.write(public_key_line(generate_keypair(user_key), "bob") + "\n")
    generate_keypair(stranger_key)
    cfg = os.path.join(sock_dir, "key.toml")
    with open(cfg, "w") as fh:
        fh.write(f"[auth]\nmode = 'key'\nauthorized_keys = '{keys}'\n")
    path = os.path.join(sock_dir, "k.sock")
    proc = spawn_siovd(path, "--config", cfg)
    try:
        yield path, admin_key, user_key
    finally:
        proc.terminate()
        proc.wait(10)


def _version(client: RawClient) -> dict[str, object]:
    reply = client.request(Command.VERSION, {"major": 1, "minor": 0})
    assert not reply.is_error
    return reply.body


def test_key_auth_gates_every_command(key_daemon: tuple[str, str, str]) -> None:
    path, _, _ = key_daemon
    raw = RawClient(path)
    version = _version(raw)
    assert version["auth"] == "key" and len(version["nonce"]) == 32  # type: ignore[arg-type]
    for command, body in [
        (Command.PING, {}),
        (Command.INFO, {}),
        (Command.STATS, {}),
        (Command.MEM_LIST, {}),
        (Command.MDEV_CREATE, {"parent": "siov_test", "type_id": "siov_test-1"}),
        (Command.MDEV_LIST_DEFINED, {}),
    ]:
        reply = raw.request(command, body)
        assert reply.is_error and reply.error == errno.EACCES, (command, reply)
        assert "before AUTH" in reply.body["message"]
    reply = raw.request(Command.AUTH, {})
    assert reply.error == errno.EACCES and "public_key" in reply.body["message"]


def test_keys_identities_and_roles(key_daemon: tuple[str, str, str], sock_dir: str) -> None:
    path, admin_key, user_key = key_daemon
    with siov.BlockingClient(path, key_path=admin_key) as admin:
        session = admin.info().session
        assert (session.identity, session.role) == ("alice", "admin") and session.id > 0
        admin.define("siov_test", "siov_test-1")
    with siov.BlockingClient(path, key_path=user_key) as user:
        assert user.info().session.role == "user"
        assert user.ping(b"x") == b"x"
        with pytest.raises(siov.PermissionDenied) as info:
            user.define("siov_test", "siov_test-1")
        assert info.value.errno == errno.EPERM and "admin" in info.value.message
        with pytest.raises(siov.PermissionDenied):
            user.devices(everything=True)
    with pytest.raises(siov.PermissionDenied) as info:
        siov.BlockingClient(path, key_path=os.path.join(sock_dir, "stranger"))
    assert info.value.errno == errno.EACCES
    with pytest.raises(siov.PermissionDenied):
        siov.BlockingClient(path)  # no key at all


def test_bad_and_replayed_signatures(key_daemon: tuple[str, str, str]) -> None:
    from siov.keys import load_private_key, sign_challenge

    path, _, user_key = key_daemon
    key = load_private_key(user_key)
    first = RawClient(path)
    nonce = bytes(_version(first)["nonce"])  # type: ignore[arg-type]
    public, signature = sign_challenge(key, nonce)
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    reply = first.request(Command.AUTH, {"public_key": public, "signature": bad})
    assert reply.error == errno.EACCES
    reply = first.request(Command.AUTH, {"public_key": public, "signature": signature})
    assert not reply.is_error and reply.body["identity"] == "bob"
    second = RawClient(path)
    other_nonce = bytes(_version(second)["nonce"])  # type: ignore[arg-type]
    assert other_nonce != nonce
    reply = second.request(Command.AUTH, {"public_key": public, "signature": signature})
    assert reply.error == errno.EACCES  # a signature never verifies on another connection
    reply = second.request(Command.PING, {})
    assert reply.error == errno.EACCES


def test_peercred_refuses_a_uid_not_allowed(sock_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    os.chmod(sock_dir, 0o755)
    cfg = os.path.join(sock_dir, "pc.toml")
    with open(cfg, "w") as fh:
        fh.write(
            "[auth]\nmode = 'peercred'\nallowed_users = ['root']\n[server]\nsocket_mode = 0o666\n"
        )
    path = os.path.join(sock_dir, "pc.sock")
    proc = spawn_siovd(path, "--config", cfg)
    try:
        with siov.BlockingClient(path) as root:
            assert root.info().session.role == "admin"
        err, message = _auth_as(path, 65534, 65534)
        assert err == errno.EACCES, message
        assert "65534" in message or "nobody" in message, message
    finally:
        proc.terminate()
        proc.wait(10)


def _auth_as(path: str, uid: int, gid: int) -> tuple[int, str]:
    """Fork, drop to ``uid``, negotiate and AUTH over a raw socket; return (errno, message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, no threads, just the protocol
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            raw = RawClient(path)
            _version(raw)
            reply = raw.request(Command.AUTH, {})
            os.write(w, json.dumps([reply.error, reply.body.get("message", "")]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    err, message = json.loads(data)
    return int(err), str(message)


# ---- persistent definitions ------------------------------------------------------------------


def test_definitions_survive_restarts_and_autostart(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "def.sock")
    state = os.path.join(sock_dir, "state")
    proc = spawn_siovd(path, "--state-dir", state)
    with siov.BlockingClient(path) as admin:
        # attributes are written on start: a dsa-1dwq mdev's are its WQ's
        auto = admin.define("dsa0", "dsa-1dwq", start="auto", attrs=[{"priority": "7"}])
        manual = admin.define("dsa0", "dsa-1swq")
        with pytest.raises(siov.AlreadyExists):
            admin.define("dsa0", "siov_test-1", uuid=auto.uuid)
    proc.terminate()
    assert proc.wait(15) == 0
    proc = spawn_siovd(path, "--state-dir", state)
    try:
        with siov.BlockingClient(path) as admin, siov.BlockingClient(path) as vmm:
            listing = {d.uuid: d for d in admin.defined().definitions}
            assert listing[auto.uuid].running and not listing[manual.uuid].running
            assert listing[auto.uuid].attrs == [{"priority": "7"}]
            wq0 = admin.accel_list()[0]["groups"][0]["grouped_workqueues"][0]
            assert (wq0["dev"], wq0["priority"], wq0["clients"]) == ("wq0.0", 7, 1)
            started = admin.start(manual.uuid)
            assert started.uuid == manual.uuid and started.type_id == "dsa-1swq"
            # a client takes a started definition's mdev with a plain claim, and uses it
            dev = vmm.claim_device(auto.uuid)
            dom = vmm.alloc_domain().domain_id
            vmm.attach_device(dom, dev.uuid)
            with pytest.raises(siov.Busy):
                admin.stop(auto.uuid)
            with pytest.raises(siov.NotFound):
                admin.claim_device(auto.uuid)  # already claimed
            with pytest.raises(siov.Busy):
                vmm.remove_mdev(auto.uuid)
        with siov.BlockingClient(path) as admin:
            # the VMM left: the mdev went back to the host, on its default domain
            settle(
                lambda: not admin.defined(uuid=auto.uuid).definitions[0].claimed,
                "the definition's mdev is unclaimed again",
                15,
            )
            admin.stop(auto.uuid)
            with pytest.raises(siov.Busy):
                admin.undefine(manual.uuid)  # running
            admin.stop(manual.uuid)
            admin.undefine(manual.uuid)
            assert [d.uuid for d in admin.defined().definitions] == [auto.uuid]
    finally:
        proc.terminate()
        proc.wait(15)


def test_siovctl_json_round_trips_into_define(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rt.sock")
    proc = spawn_siovd(path)
    base = [*SIOVCTL, "--socket", path]
    try:
        out = subprocess.run(
            [
                *base,
                "--json",
                "define",
                "-p",
                "siov_test",
                "-t",
                "siov_test-1",
                "--auto",
                "--addattr",
                "a=1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        uuid = json.loads(out.stdout)["uuid"]
        one = subprocess.run(
            [*base, "--json", "list", "--defined", "-u", uuid],
            capture_output=True,
            text=True,
            timeout=60,
        )
        config = json.loads(one.stdout)
        assert config == {"mdev_type": "siov_test-1", "start": "auto", "attrs": [{"a": "1"}]}
        whole = subprocess.run(
            [*base, "--json", "list", "--defined"], capture_output=True, text=True, timeout=60
        )
        dump = json.loads(whole.stdout)
        assert dump == [{"siov_test": [{uuid: config}]}]
        jsonfile = os.path.join(sock_dir, "one.json")
        with open(jsonfile, "w") as fh:
            json.dump(config, fh)
        subprocess.run([*base, "undefine", "-u", uuid], check=True, timeout=60, capture_output=True)
        again = subprocess.run(
            [*base, "--json", "define", "-u", uuid, "-p", "siov_test", "--jsonfile", jsonfile],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0, again.stderr
        whole2 = subprocess.run(
            [*base, "--json", "list", "--defined"], capture_output=True, text=True, timeout=60
        )
        assert json.loads(whole2.stdout) == dump
        table = subprocess.run(
            [*base, "list", "--defined"], capture_output=True, text=True, timeout=60
        )
        assert uuid in table.stdout and "auto" in table.stdout
    finally:
        proc.terminate()
        proc.wait(15)


def test_sigkill_during_a_define_storm_loses_nothing_acknowledged(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "storm.sock")
    state = os.path.join(sock_dir, "state")
    storm = textwrap.dedent(
        f"""
        import siov, sys
        try:
            with siov.BlockingClient({path!r}) as c:
                while True:
                    d = c.define("siov_test", "siov_test-1")
                    print(d["uuid"], flush=True)
        except siov.SiovError:
            pass
        """
    )
    for round_ in range(3):
        proc = spawn_siovd(path, "--state-dir", state)
        client = subprocess.Popen([sys.executable, "-c", storm], stdout=subprocess.PIPE, text=True)
        acked: list[str] = []
        assert client.stdout is not None
        while len(acked) < 20 + 15 * round_:
            line = client.stdout.readline()
            assert line, "the storm client stopped early"
            acked.append(line.strip())
        proc.send_signal(signal.SIGKILL)  # in the middle of the storm
        proc.wait(10)
        rest, _ = client.communicate(timeout=30)
        acked += [u for u in rest.split() if u]
        with open(os.path.join(state, "mdevs.json")) as fh:
            json.load(fh)  # always parses
        os.unlink(path)  # SIGKILL left the socket file; a fresh start would replace it anyway
        proc = spawn_siovd(path, "--state-dir", state)
        try:
            with siov.BlockingClient(path) as admin:
                defined = {d.uuid for d in admin.defined().definitions}
            assert set(acked) <= defined, set(acked) - defined
        finally:
            proc.terminate()
            proc.wait(10)
