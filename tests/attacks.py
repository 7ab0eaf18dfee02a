"""The hostile world: each attack a client can make on a shared daemon, runnable with a bystander.

An :class:`Attack` is a daemon config (TOML) and a function that attacks a running
:class:`~tests.daemonproc.LoggedDaemon` for real and returns what it observed (errnos, counts),
for the test to assert on. :func:`run_attack` starts the daemon, measures the bystander's worst
PING with no attack (the baseline), then during the attack, and says whether the daemon lived.
The tests in ``tests/integration/test_hostile_*.py`` and the figures
``bystander_ping_worst_ms_<name>`` of ``bench/hostile_figures.py`` run the same attacks.

To add an attack: write ``def my_attack(d: LoggedDaemon) -> dict[str, Any]`` that finishes in a
few seconds, decorate it with ``@attack("my_attack", config=...)``, and write its test with
:func:`run_attack`. ``needs`` returns why it cannot run on this machine (or None); the test
skips with that reason, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from siov import dsa
from siov_protocol import Command
from siov_protocol.dsa import IDXD_OP_FLAG_RCI
from tests.bystander import Bystander, Window
from tests.daemonproc import LoggedDaemon, logged_siovd
from tests.helpers import settle
from tests.rawclient import HDR, RawClient, Refused, body, frame, send_all

MiB = 1 << 20

AttackFn = Callable[[LoggedDaemon], dict[str, Any]]


@dataclass(frozen=True)
class Attack:
    name: str
    fn: AttackFn
    config: str = ""
    needs: Callable[[], str | None] = lambda: None
    doc: str = ""


ATTACKS: dict[str, Attack] = {}


def attack(
    name: str, *, config: str = "", needs: Callable[[], str | None] = lambda: None
) -> Callable[[AttackFn], AttackFn]:
    def register(fn: AttackFn) -> AttackFn:
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        ATTACKS[name] = Attack(name, fn, config, needs, doc)
        return fn

    return register


@dataclass
class Outcome:
    """What one attack did: its own observations, the bystander's two windows, the daemon."""

    name: str
    result: dict[str, Any]
    baseline: Window
    under: Window
    alive: bool
    returncode: int | None
    failures: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return self.under.line(self.name, self.baseline)


def require(attack: Attack) -> None:
    """Skip (or, under CI=true, fail) when the attack cannot run on this machine."""
    reason = attack.needs()
    if reason is None:
        return
    import pytest  # here, so that bench/hostile_figures.py needs no pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"{attack.name} must run under CI=true: {reason}")
    pytest.skip(reason)


def run_attack(
    name: str,
    baseline_s: float = 1.0,
    attack_s: float = 1.0,
    check: Callable[[LoggedDaemon], None] | None = None,
) -> Outcome:
    """Start a daemon with the attack's config, a bystander on it, and run the attack.

    The attack is repeated until ``attack_s`` has passed (at least once, while the daemon
    lives), so the bystander's window holds a few dozen PINGs; ``result`` is the last run's,
    with ``runs``. ``check(d)`` runs after the attack, on the still-running daemon.
    """
    spec = ATTACKS[name]

    def repeated(d: LoggedDaemon) -> dict[str, Any]:
        start, runs = time.monotonic(), 0
        while True:
            result = spec.fn(d)
            runs += 1
            if time.monotonic() - start >= attack_s or not d.alive():
                return {**result, "runs": runs}

    with logged_siovd(spec.config) as d, Bystander(d.path) as by:
        _, baseline = by.measure(lambda: time.sleep(baseline_s))
        result, under = by.measure(lambda: repeated(d))
        if check is not None and d.alive():
            check(d)
        alive = d.alive()
        failures = d.failures_logged()
    return Outcome(name, result, baseline, under, alive, d.proc.returncode, failures)


# ---- raw sessions ------------------------------------------------------------------------


def raw_session(path: str, timeout: float = 20.0, *, negotiate: bool = True) -> RawClient:
    """A raw connection, negotiated with room for the most fds a message may carry."""
    return RawClient(path, timeout, negotiate=negotiate, capabilities={"max_fds": 253})


def memfd(size: int, flags: int = 0) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | flags)
    os.ftruncate(fd, size)
    return fd


@contextlib.contextmanager
def closing_fds(*fds: int) -> Iterator[None]:
    try:
        yield
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


def punch_hole(fd: int, offset: int, length: int) -> None:
    """``fallocate(PUNCH_HOLE)``, which F_SEAL_SHRINK does not forbid."""
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def stats(path: str) -> dict[str, Any]:
    with raw_session(path) as raw:
        return raw.call(Command.STATS)


def other_client_registers(path: str) -> bool | str:
    """True when a new client can connect, negotiate and register a memfd; else why not."""
    try:
        with raw_session(path, timeout=5.0) as other:
            mfd = memfd(4096)
            with closing_fds(mfd):
                return "region" in other.call(Command.MEM_REGISTER, {"size": 4096}, [mfd])
    except (OSError, ConnectionError, Refused) as exc:
        return f"{type(exc).__name__}: {exc}"


# ---- 1. a blocking eventfd -------------------------------------------------------------------

EVENTFD_FULL = 0xFFFF_FFFF_FFFF_FFFE  # the largest count: one more write would block
FIRE_TIMES = 200
RCI_TIMES = 20


@attack("blocking_eventfd")
def blocking_eventfd(d: LoggedDaemon) -> dict[str, Any]:
    """A blocking eventfd at its maximum count as an MSI-X vector, then the vector fired."""
    efd = os.eventfd(0)  # blocking, as a careless or hostile client would make it
    os.write(efd, EVENTFD_FULL.to_bytes(8, "little"))
    with closing_fds(efd), raw_session(d.path, timeout=10.0) as raw:
        dev = raw.call(Command.MDEV_CREATE, {"parent": "dsa0", "type_id": "dsa-1dwq"})
        uuid = dev["uuid"]
        irq = {"device": uuid, "index": 2, "start": 0, "count": 1}
        raw.call(Command.DEVICE_SET_IRQS, {**irq, "flags": 4 | 32}, [efd])  # DATA_EVENTFD
        fired = 0
        try:
            for _ in range(FIRE_TIMES):  # DATA_NONE | TRIGGER: fire it, as the device would
                raw.call(Command.DEVICE_SET_IRQS, {**irq, "flags": 1 | 32})
                fired += 1
            # ... and let completions fire it: NOOPs asking for a completion interrupt (RCI).
            mem = memfd(4096)
            with closing_fds(mem):
                region = raw.call(Command.MEM_REGISTER, {"size": 4096}, [mem])
                mapping = {"domain": dev["domain_id"], "phys": region["phys"], "size": 4096}
                record = raw.call(Command.MAP, mapping)["iova"]
            descriptor = dsa.noop(completion=record, flags=IDXD_OP_FLAG_RCI, int_handle=0)
            completed = 0
            for _ in range(RCI_TIMES):
                got = raw.call(Command.SUBMIT, {"device": uuid, "descriptors": descriptor})
                completed += got["accepted"]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # completions run on the engines
                accel = raw.call(Command.STATS).get("accel", {})
                if accel.get("completed", 0) >= completed:
                    break
                time.sleep(0.01)
        except OSError as exc:  # the daemon stopped answering even the attacker
            return {"fired": fired, "stalled": f"{type(exc).__name__}: {exc}"}
        nonblocking = not os.get_blocking(efd)
    return {
        "fired": fired,
        "rci": completed,
        "accel": accel,
        "made_nonblocking": nonblocking,
    }


# ---- 2. a close() that lingers -----------------------------------------------------------------

LINGER_S = 8


@contextlib.contextmanager
def lingering_socket(linger_s: int = LINGER_S) -> Iterator[socket.socket]:
    """A loopback TCP socket with SO_LINGER on and unsent data: its last close() blocks for
    ``linger_s`` seconds (the peer never reads, its receive window is shut)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.connect(server.getsockname())
    peer, _ = server.accept()
    try:
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                client.send(b"x" * 65536)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, linger_s))
        yield client
    finally:
        client.close()
        peer.close()
        server.close()


@attack("linger_close")
def linger_close(d: LoggedDaemon) -> dict[str, Any]:
    """Lingering TCP sockets handed over every way the daemon discards an fd: refused before
    VERSION, on a bad body, on a command that takes none, and pending at disconnect."""
    seen: dict[str, Any] = {}

    def hand(route: str, send: Callable[[socket.socket, int], None]) -> None:
        with (
            lingering_socket() as victim,
            raw_session(d.path, negotiate=route != "before_version") as raw,
        ):
            fd = victim.detach()  # the daemon's copy becomes the last one
            try:
                send(raw.sock, fd)  # on the socket: the subject is which bytes carry the fd
            finally:
                os.close(fd)
            if route != "pending_at_disconnect":
                got = raw.reply()
                seen[route] = got.error

    # Refused before VERSION (EPROTO), a bad body (EINVAL), no fds taken (EINVAL).
    hand("before_version", lambda s, fd: send_all(s, frame(1, Command.PING, b""), [fd]))
    hand("bad_body", lambda s, fd: send_all(s, frame(7, Command.PING, b"\xc1"), [fd]))
    hand("ping_with_fd", lambda s, fd: send_all(s, frame(8, Command.PING, body({})), [fd]))
    # As the memory of a MEM_REGISTER: not a memfd (EINVAL), and discarded.
    mem = frame(10, Command.MEM_REGISTER, body({"size": 4096}))
    hand("mem_register", lambda s, fd: send_all(s, mem, [fd]))
    # Half a message with the fd, then the connection goes away.
    hand(
        "pending_at_disconnect",
        lambda s, fd: send_all(s, HDR.pack(9, Command.PING, 64, 0, 0), [fd]),
    )
    return seen


REFUSED_CONFIG = "[limits]\nuid_connections = 2\n"  # the bystander and one more


def _connect_retrying(path: str, within_s: float = 10.0) -> RawClient:
    """A negotiated connection, retried while the previous run's are still being released."""
    got: list[RawClient] = []

    def connected() -> bool:
        try:
            got.append(raw_session(path))
        except Refused:
            return False
        return True

    settle(connected, "a connection under limits.uid_connections", within_s)
    return got[0]


@attack("linger_refused", config=REFUSED_CONFIG)
def linger_refused(d: LoggedDaemon) -> dict[str, Any]:
    """A connection over limits.uid_connections sends a lingering TCP socket with its first
    header: the refusal must not release it on the loop (a recv() without room for the fd
    frees it in the reader's task, and a lingering close blocks that task)."""
    with (
        _connect_retrying(d.path),
        lingering_socket() as victim,
        RawClient(d.path, timeout=10) as raw,
    ):
        fd = victim.detach()
        try:
            # by hand: the fd rides on the connection's very first header
            raw.send_raw(frame(1, Command.PING, b""), [fd])
        finally:
            os.close(fd)
        reply = raw.recv()
        _rest(raw.sock)  # the daemon closes a refused connection
    return {"refused": (reply.error, str(reply.body.get("message", "")))}


def _rest(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


# ---- 3. a hugetlb memfd whose page vanishes ----------------------------------------------------

HUGE = 2 * MiB
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def hugetlb_needs() -> str | None:
    if os.geteuid() != 0:
        return "needs root to set /proc/sys/vm/nr_hugepages"
    if not os.access(NR_HUGEPAGES, os.W_OK):
        return f"{NR_HUGEPAGES} is not writable here"
    return None


@contextlib.contextmanager
def huge_pages(count: int) -> Iterator[int]:
    """Set the 2 MiB pool to ``count`` pages for the block; yields how many it got."""
    with open(NR_HUGEPAGES) as fh:
        old = fh.read().strip()
    try:
        with open(NR_HUGEPAGES, "w") as fh:
            fh.write(str(count))
        with open(NR_HUGEPAGES) as fh:
            yield int(fh.read())
    finally:
        with open(NR_HUGEPAGES, "w") as fh:
            fh.write(old)


def hugetlb_memfd(size: int) -> int:
    fd = os.memfd_create("hostile-huge", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | os.MFD_HUGETLB)
    os.ftruncate(fd, size)
    return fd


def free_huge_pages() -> int:
    """Huge pages free and not reserved (what a new mapping can still fault in)."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("HugePages_Free", "HugePages_Rsvd"):
                info[key] = int(rest.split()[0])
    return info["HugePages_Free"] - info["HugePages_Rsvd"]


@attack("hugetlb_sigbus", needs=hugetlb_needs)
def hugetlb_sigbus(d: LoggedDaemon) -> dict[str, Any]:
    """An MFD_HUGETLB memfd registered, its page punched out, the pool exhausted, then DMA."""
    import mmap

    out: dict[str, Any] = {}
    iova = 0x4000_0000
    with huge_pages(4) as got, raw_session(d.path) as raw:
        out["pool"] = got
        fd = hugetlb_memfd(HUGE)
        with closing_fds(fd):
            try:
                region = raw.call(Command.MEM_REGISTER, {"size": HUGE}, [fd])
            except Refused as exc:
                out["register"] = (exc.errno, exc.message)
                return out
            out["register"] = 0
            dev = raw.call(Command.BUS_REGISTER_DEVICE, {"name": "hostile-emu"})
            mapping = {"domain": dev["domain_id"], "phys": region["phys"], "size": HUGE}
            iova = raw.call(Command.MAP, {**mapping, "iova": iova})["iova"]
            read = {"device": dev["uuid"], "iova": iova, "length": 8}
            raw.call(Command.DMA_READ, read)  # the daemon faults the huge page in
            punch_hole(fd, 0, HUGE)  # ... and it is gone
            free = free_huge_pages()
            hog = hugetlb_memfd(max(free, 1) * HUGE)
            with closing_fds(hog):
                hold = mmap.mmap(hog, max(free, 1) * HUGE)
                for off in range(0, free * HUGE, HUGE):
                    hold[off] = 1  # every free huge page is now the hog's
                out["hogged"] = free
                try:
                    out["dma_read"] = raw.request(Command.DMA_READ, read).error
                except (OSError, ConnectionError) as exc:
                    out["dma_read"] = f"{type(exc).__name__}: {exc}"
                hold.close()
    return out


@attack("shmem_punch")
def shmem_punch(d: LoggedDaemon) -> dict[str, Any]:
    """A shmem memfd registered, read by DMA, its page punched out, read again: zeroes, no
    SIGBUS (SPEC 8.3: the one kind of memfd the daemon takes)."""
    out: dict[str, Any] = {}
    with raw_session(d.path) as raw:
        fd = memfd(HUGE)
        with closing_fds(fd):
            os.pwrite(fd, b"secret!!", 0)
            region = raw.call(Command.MEM_REGISTER, {"size": HUGE}, [fd])
            dev = raw.call(Command.BUS_REGISTER_DEVICE, {"name": "hostile-emu"})
            mapping = {"domain": dev["domain_id"], "phys": region["phys"], "size": HUGE}
            iova = raw.call(Command.MAP, mapping)["iova"]
            read = {"device": dev["uuid"], "iova": iova, "length": 8}
            out["before"] = bytes(raw.call(Command.DMA_READ, read)["data"])
            punch_hole(fd, 0, HUGE)
            out["after"] = bytes(raw.call(Command.DMA_READ, read)["data"])
    return out


# ---- 5. fds dripped into a message that never completes ---------------------------------------

DRIP_ROUNDS = 100
DRIP_FDS = 253


@attack("fd_drip")
def fd_drip(d: LoggedDaemon) -> dict[str, Any]:
    """A header claiming 1 MiB, then 100 x sendmsg(1 byte + 253 fds), never completing."""
    out: dict[str, Any] = {"sent_fds": 0}
    before = d.fds()
    spare = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(DRIP_FDS)]
    with closing_fds(*spare), raw_session(d.path) as raw:
        # on the socket: the subject is a frame torn into 1-byte sendmsg() calls with fds
        raw.sock.sendall(HDR.pack(1, Command.PING, MiB, 0, 0))
        error = None
        try:
            for _ in range(DRIP_ROUNDS):
                send_all(raw.sock, b"\0", spare)
                out["sent_fds"] += DRIP_FDS
        except OSError as exc:  # the daemon dropped us: the cap worked
            error = exc.errno
        out["send_error"] = error
        out["peak_fds"] = d.fds() - before
        raw.sock.settimeout(5)
        try:
            got = raw.reply()
            out["reply"] = (got.error, got.body.get("message"))
        except (OSError, ConnectionError):
            out["reply"] = None
        # Another client can still connect and hand over an fd.
        out["other_register"] = other_client_registers(d.path)
    return out


# ---- 6. many connections with regions up to the limits ----------------------------------------

REGION_CLIENTS = 6
REGIONS_EACH = 256  # limits.memory_regions, default
UID_REGIONS = 1024  # limits.uid_memory_regions, default
OTHER_UID = 65534  # nobody
#: The socket is open to every user, so a second uid can connect (the default mode is 0660).
REGIONS_CONFIG = "[server]\nsocket_mode = 0o666\n"


def other_uid_registers(path: str) -> str:
    """In a forked child running as uid 65534: connect, register a page; ``"<uid> True"`` when
    it could (root only: the child drops to nobody with setuid)."""
    os.chmod(os.path.dirname(path), 0o755)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec (nobody may not read this interpreter), no threads
        try:
            os.close(r)
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            with raw_session(path, timeout=10.0) as raw:
                fd = memfd(4096)
                ok = raw.call(Command.MEM_REGISTER, {"size": 4096}, [fd])["region"] > 0
                text = f"{os.getuid()} {ok}"
        except BaseException as exc:
            text = f"{type(exc).__name__}: {exc}"
        os.write(w, text.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        text = fh.read().decode()
    os.waitpid(pid, 0)
    return text


@attack("region_fds", config=REGIONS_CONFIG)
def region_fds(d: LoggedDaemon) -> dict[str, Any]:
    """Connections of one uid registering regions up to limits.memory_regions each, until
    limits.uid_memory_regions stops them; the daemon's fds do not grow with regions, and a
    client of another uid is still served."""
    before = d.fds()
    clients = [raw_session(d.path) for _ in range(REGION_CLIENTS)]
    refused: list[tuple[int, str]] = []
    regions = 0
    try:
        for raw in clients:
            for _ in range(REGIONS_EACH + 1):
                fd = memfd(4096)
                with closing_fds(fd):
                    try:
                        raw.call(Command.MEM_REGISTER, {"size": 4096}, [fd])
                        regions += 1
                    except Refused as exc:
                        refused.append((exc.errno, exc.message))
                        break
        held = d.fds() - before - 2 * REGION_CLIENTS  # each connection is two of the daemon's
        maps = d.memfd_maps()
        cost = clients[0].call(Command.STATS)
        other = other_uid_registers(d.path) if os.geteuid() == 0 else "not root"
    finally:
        for raw in clients:
            raw.close()
    return {
        "regions": regions,
        "fds_held": held,
        "memfd_maps": maps,
        "refused": sorted(set(refused)),
        "session": cost["session"],
        "uid": cost["uid"],
        "daemon": {k: v for k, v in cost["daemon"].items() if k.startswith("fd")},
        "other_uid": other,
    }


# ---- 11. one uid takes every connection slot -------------------------------------------------

FLOOD_CONNECTIONS = 80  # past limits.uid_connections (64 by default)


@attack("connection_flood", config=REGIONS_CONFIG)
def connection_flood(d: LoggedDaemon) -> dict[str, Any]:
    """One uid opens more connections than limits.uid_connections allows; the ones past it
    are refused naming the limit, and a client of another uid still gets in."""
    held: list[RawClient] = []
    refused: list[tuple[int, str]] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            try:
                held.append(raw_session(d.path, timeout=10.0))
            except Refused as exc:
                refused.append((exc.errno, exc.message))
        other = other_uid_registers(d.path) if os.geteuid() == 0 else "not root"
    finally:
        for raw in held:
            raw.close()
    return {"held": len(held), "refused": sorted(set(refused)), "other_uid": other}
