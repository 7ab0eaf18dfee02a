"""The unit files in systemd/: systemd itself checks them, and they agree with each other.

These tests need systemd's tools (``systemd-analyze``, ``systemd-sysusers``; Debian package
``systemd``). They fail, never skip, when the tools are missing: a green run must mean the units
were checked.
"""

from __future__ import annotations

import ctypes
import errno
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
MAX_EXPOSURE = 1.5


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian: apt-get install systemd)")
    return path


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) in order; systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: {line!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def value(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [v for k, v in sections[section] if k == key]
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def venv_siovd() -> str:
    """An executable that exists here, for ExecStart= (verify checks the binary is there)."""
    script = Path(sys.executable).parent / "siovd"
    return str(script if script.exists() else Path(sys.executable))


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    shutil.copy(UNITS / "siovd.socket", tmp_path)
    service = (UNITS / "siovd.service").read_text()
    service, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={venv_siovd()}", service)
    assert count == 1
    (tmp_path / "siovd.service").write_text(service)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_units_verify(unit_dir: Path) -> None:
    # --recursive-errors makes warnings (unknown keys, missing units) fail the exit status.
    done = analyze(
        "verify",
        "--recursive-errors=yes",
        "--man=no",
        "./siovd.socket",
        "./siovd.service",
        cwd=unit_dir,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == ""


def test_verify_is_not_a_rubber_stamp(unit_dir: Path) -> None:
    """The same command fails for a unit with an unknown key: the check above means something."""
    service = unit_dir / "siovd.service"
    service.write_text(service.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    done = analyze(
        "verify",
        "--recursive-errors=yes",
        "--man=no",
        "./siovd.socket",
        "./siovd.service",
        cwd=unit_dir,
    )
    assert done.returncode != 0
    assert "NoSuchKey" in done.stderr


def overall_exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for siovd\.service: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))


def test_service_sandbox_exposure(unit_dir: Path) -> None:
    done = analyze("security", "--offline=true", "--no-pager", "./siovd.service", cwd=unit_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    exposure = overall_exposure(done.stdout)
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_exposure_parser_sees_a_weak_unit(unit_dir: Path) -> None:
    """A service without the sandbox scores high, so the threshold above is a real bar."""
    bare = unit_dir / "siovd.service"
    kept = [
        line
        for line in bare.read_text().splitlines()
        if line.startswith(("[", "Description", "Type", "ExecStart", "User", "Group"))
    ]
    bare.write_text("\n".join(kept) + "\n")
    done = analyze("security", "--offline=true", "--no-pager", "./siovd.service", cwd=unit_dir)
    assert overall_exposure(done.stdout) > 5.0


def test_units_agree() -> None:
    socket = parse_unit(UNITS / "siovd.socket")
    service = parse_unit(UNITS / "siovd.service")

    listen = Path(value(socket, "Socket", "ListenStream"))
    assert listen == Path("/run/siovd/siovd.sock")
    assert value(socket, "Socket", "FileDescriptorName") == "siovd"
    assert value(socket, "Socket", "Accept") == "no"
    assert value(socket, "Socket", "SocketMode") == "0660"
    assert value(socket, "Socket", "SocketGroup") == "siov"
    assert value(socket, "Socket", "RemoveOnStop") == "yes"

    assert value(service, "Service", "Type") == "notify"
    assert value(service, "Service", "WatchdogSec") == "30"
    assert value(service, "Unit", "Requires") == "siovd.socket"
    assert value(service, "Unit", "After") == "siovd.socket"
    # The runtime directory is the socket's directory: it must outlive a service stop.
    assert listen.parent == Path("/run") / value(service, "Service", "RuntimeDirectory")
    assert value(service, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert value(service, "Service", "RuntimeDirectoryMode") == value(
        socket, "Socket", "DirectoryMode"
    )
    # systemd re-owns the runtime directory to User:Group; the socket must keep its group.
    assert value(service, "Service", "Group") == value(socket, "Socket", "SocketGroup")
    assert value(service, "Service", "User") == value(socket, "Socket", "SocketUser")
    # A private user namespace would turn every client into uid 65534 (see the unit).
    assert all(k != "PrivateUsers" for k, _ in service["Service"])
    assert value(service, "Service", "RestrictAddressFamilies") == "AF_UNIX"


def test_sysusers_creates_the_unit_identities(tmp_path: Path) -> None:
    service = parse_unit(UNITS / "siovd.service")
    (tmp_path / "etc").mkdir()
    snippet = (UNITS / "siovd.sysusers").read_text()
    done = subprocess.run(
        [tool("systemd-sysusers"), f"--root={tmp_path}", "-"],
        input=snippet,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    groups = {
        line.split(":")[0]: int(line.split(":")[2])
        for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    users = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    user = value(service, "Service", "User")
    group = value(service, "Service", "Group")
    assert group in groups
    assert user in users
    assert int(users[user][3]) == groups[group]  # primary group, as the unit assumes
    assert users[user][5] == "/var/lib/" + value(service, "Service", "StateDirectory")


PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

MDWE_CHILD = textwrap.dedent(
    """
    import ctypes, json, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({set_mdwe}, {refuse}, 0, 0, 0) != 0:
        sys.exit("prctl: " + os.strerror(ctypes.get_errno()))
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("a writable+executable mapping was allowed: MDWE is not in force")
    except OSError:
        pass

    import msgpack, structlog, trio
    from siov.keys import sign_challenge
    from siovd.host.auth import AuthorizedKeys, new_nonce
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding, NoEncryption, PrivateFormat, PublicFormat, load_ssh_private_key)

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    key = load_ssh_private_key(pem, None)
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    nonce = new_nonce()
    raw, sig = sign_challenge(key, nonce)
    who = AuthorizedKeys.parse("name=mdwe " + line).verify(raw, sig, nonce)

    async def main():
        a, b = trio.socket.socketpair()
        with a, b:
            await a.send(msgpack.packb({{"who": who.name}}))
            return msgpack.unpackb(await b.recv(100))
    print(json.dumps(trio.run(main)))
    structlog.get_logger().info("done")
    """
)


def test_daemon_stack_runs_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes must not break Python, cryptography, msgpack or trio.

    PR_SET_MDWE (Linux 6.3) refuses the same mappings as systemd's seccomp version.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    probe = libc.prctl(PR_SET_MDWE + 1, 0, 0, 0, 0)  # PR_GET_MDWE: is the prctl known at all?
    if probe < 0 and ctypes.get_errno() == errno.EINVAL:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    code = MDWE_CHILD.format(set_mdwe=PR_SET_MDWE, refuse=PR_MDWE_REFUSE_EXEC_GAIN)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == '{"who": "mdwe"}'


def test_unit_fd_limit_covers_what_the_default_limits_need() -> None:
    """LimitNOFILE= is the unit's job (setrlimit is in the filtered @resources set); it must
    cover every fd the default limits let clients make the daemon hold (host/fdlimit.py)."""
    from siovd.host.config import from_dict
    from siovd.host.fdlimit import fd_need
    from siovd.model.accel import Accelerators

    service = parse_unit(UNITS / "siovd.service")
    accel = Accelerators.embedded()
    bound = sum(d.total_wq_size + len(d.wqs) for d in accel.devices.values())
    need, _, _ = fd_need(from_dict({}), bound)
    assert int(value(service, "Service", "LimitNOFILE")) >= need
    assert "@resources" in " ".join(v for k, v in service["Service"] if k == "SystemCallFilter")
