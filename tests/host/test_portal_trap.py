"""libsiov_portal.so against a fake broker: every trapped MOVDIR64B arrives, in order, with its
64 bytes, whatever the addressing mode; ENQCMD gets ZF from the broker's answer; the opener's
consent fds name the opener; a fault that is not a portal store still kills the program.

Needs only a C compiler (the library itself is built by the package's build hook).
"""

from __future__ import annotations

import array
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from siov_host.run import library_path

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("portal") / "portal_prog"
    subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(HERE / "portal_prog.c")],
        check=True,
    )
    return str(out)


@dataclass
class Conn:
    device: int
    wq: int
    fd_targets: list[str]
    posted: list[bytes] = field(default_factory=list)
    enq: list[bytes] = field(default_factory=list)


class FakeBroker:
    """Speaks the broker side of the library's socket: OPEN answers dedicated for wq0.0 and
    shared for wq0.1; every other ENQ is answered "retry"."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conns: list[Conn] = []
        self.threads: list[threading.Thread] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            fds = array.array("i")
            data, anc, _, _ = conn.recvmsg(16, socket.CMSG_SPACE(8))
            for _level, _kind, payload in anc:
                fds.frombytes(payload)
            kind, length, device, wq = struct.unpack("<IIII", data)
            assert (kind, length) == (1, 8)
            targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
            for fd in fds:
                os.close(fd)
            c = Conn(device, wq, targets)
            self.conns.append(c)
            conn.sendall(struct.pack("<iIII", 0, 7, wq, 16))
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 72:
                    kind, length = struct.unpack_from("<II", buf)
                    assert length == 64
                    desc, buf = buf[8:72], buf[72:]
                    if kind == 2:
                        c.posted.append(desc)
                    else:
                        assert kind == 3
                        c.enq.append(desc)
                        conn.sendall(struct.pack("<iI", 0, len(c.enq) % 2))

    def join(self) -> None:
        """Wait until every connection saw EOF (the program has exited, so they all will)."""
        for t in list(self.threads):
            t.join(60)
            assert not t.is_alive()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[FakeBroker, dict[str, str]]]:
    devdir = tmp_path / "dsa"
    devdir.mkdir()
    for name in ("wq0.0", "wq0.1"):
        (devdir / name).write_text("")
    b = FakeBroker(str(tmp_path / "portal.sock"))
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=library_path(),
        SIOV_PORTAL_SOCKET=b.path,
        SIOV_PORTAL_DEVDIR=str(devdir),
    )
    try:
        yield b, env
    finally:
        b.close()


def _expected(seq: int, mode: int) -> bytes:
    return struct.pack("<II", seq, mode) + bytes((seq * 7 + i) & 0xFF for i in range(56))


def test_every_store_arrives_in_order(prog: str, broker: tuple[FakeBroker, dict[str, str]]) -> None:
    b, env = broker
    n = 20000
    out = subprocess.run([prog, str(n), "9"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the broker answers the 1st, 3rd, ... ENQ "retry": 4 accepted and 5 retried of 9
    assert out.stdout.strip() == "enq ok=4 retry=5"
    b.join()
    dwq, swq = sorted(b.conns, key=lambda c: c.wq)
    assert (dwq.device, dwq.wq, swq.wq) == (0, 0, 1)
    pid_paths = {t.rsplit("/", 1)[-1] for t in dwq.fd_targets}
    assert pid_paths == {"mem", "maps"}
    assert dwq.fd_targets[0].endswith("/mem") and dwq.fd_targets[1].endswith("/maps")
    assert len(dwq.posted) == n
    for i, desc in enumerate(dwq.posted):
        assert desc == _expected(i, i % 6), f"descriptor {i} (mode {i % 6})"
    assert [d[:4] for d in swq.enq] == [struct.pack("<I", i) for i in range(9)]
    assert swq.posted == []


def test_other_faults_still_kill(prog: str, broker: tuple[FakeBroker, dict[str, str]]) -> None:
    _, env = broker
    out = subprocess.run([prog, "1", "0", "segv"], env=env, capture_output=True, timeout=60)
    assert out.returncode == -signal.SIGSEGV
    assert out.stdout.startswith(b"enq ok=0 retry=0")


def test_a_forked_child_has_no_portal(prog: str, broker: tuple[FakeBroker, dict[str, str]]) -> None:
    b, env = broker
    out = subprocess.run([prog, "3", "0", "fork"], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines()[-1] == f"child signal {int(signal.SIGSEGV)}"
    b.join()
    dwq = next(c for c in b.conns if c.wq == 0)
    assert [d[:4] for d in dwq.posted] == [struct.pack("<I", i) for i in range(3)]


def test_open_without_char_device_is_enoent(
    tmp_path: Path, broker: tuple[FakeBroker, dict[str, str]]
) -> None:
    b, env = broker
    script = (
        "import os, errno\n"
        "try:\n"
        f"    os.open({str(tmp_path / 'dsa' / 'wq0.5')!r}, os.O_RDWR)\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
    )
    out = subprocess.run(
        ["python3", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ENOENT"
    assert b.conns == []
