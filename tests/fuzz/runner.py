"""Running fuzz connections and a well-behaved client beside them, against a live siovd.

The daemon runs as a subprocess with key authentication, so most fuzz connections are plain
``user`` sessions (admin commands are EPERM for them) and a few are ``admin``. Its log goes to
a file (a pipe nobody reads would fill and stall the daemon) that the tests scan afterwards.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import siov
from siov.keys import generate_keypair, public_key_line, sign_challenge
from siov_protocol import Command
from siov_protocol.replies import TranslateRun
from tests.daemonproc import LoggedDaemon, logged_siovd
from tests.fuzz import corpus
from tests.fuzz.frame_strategies import Batch
from tests.fuzz.wire import (
    Plan,
    Tally,
    account,
    exchange,
    expected_replies,
    frame_stream,
)
from tests.rawclient import RawClient, RawReply, body, frame

MiB = 1 << 20

# ---- the daemon under test ---------------------------------------------------------------------


@dataclass
class FuzzDaemon(LoggedDaemon):
    """A logged siovd with key authentication: a user key and an admin key are authorized."""

    user_key: str = ""
    admin_key: str = ""
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)


@contextmanager
def fuzz_daemon(config: str = "") -> Iterator[FuzzDaemon]:
    keys: dict[str, Ed25519PrivateKey] = {}

    def write_keys(tmp: str) -> str:
        lines = []
        for role in ("user", "admin"):
            keys[role] = generate_keypair(os.path.join(tmp, f"{role}.key"), f"fuzz-{role}")
            lines.append(f"role={role},name=fuzz-{role} {public_key_line(keys[role])}")
        authorized = os.path.join(tmp, "authorized_keys")
        with open(authorized, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return f'[auth]\nmode = "key"\nauthorized_keys = "{authorized}"\n'

    with logged_siovd(config, setup=write_keys) as d:
        yield FuzzDaemon(
            d.path,
            d.proc,
            d.log_path,
            d.dir,
            user_key=os.path.join(d.dir, "user.key"),
            admin_key=os.path.join(d.dir, "admin.key"),
            keys=keys,
        )


# ---- one session's prelude -------------------------------------------------------------------


def open_session(
    daemon: FuzzDaemon, role: str | None, *, negotiate: bool = True
) -> tuple[RawClient, int]:
    """Connect; VERSION and (for a role) AUTH with that role's key. Returns the client (whose
    socket then takes the fuzz chunks as they are) and the next free msg_id."""
    raw = RawClient(daemon.path, 30.0)
    if not negotiate:
        return raw, 1
    reply = raw.request(Command.VERSION, {"major": 1, "minor": 0}, msg_id=0)
    assert not reply.is_error, reply
    if role is None:
        return raw, 1
    public, signature = sign_challenge(daemon.keys[role], bytes(reply.body["nonce"]))
    fields = {"public_key": public, "signature": signature}
    reply = raw.request(Command.AUTH, fields, msg_id=1)
    assert not reply.is_error and reply.body["role"] == role, reply
    return raw, 2


def memfd(size: int) -> int:
    fd = os.memfd_create("siov-fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


def populate(raw: RawClient, msg_id: int, values: corpus.Values) -> int:
    """Create a few real objects, so valid fuzz bodies can name them. Returns the next msg_id."""

    def call(command: int, fields: dict[str, object], fds: tuple[int, ...] = ()) -> RawReply:
        nonlocal msg_id
        reply = raw.request(command, fields, fds, msg_id=msg_id)
        msg_id += 1
        return reply

    fd = memfd(2 * MiB)
    try:
        region = call(Command.MEM_REGISTER, {"size": 2 * MiB}, (fd,))
    finally:
        os.close(fd)
    assert not region.is_error, region
    values.ints += [region.body["region"], region.body["phys"], region.body["phys"] + 4096]
    dev = call(Command.BUS_REGISTER_DEVICE, {"name": "fuzz"})
    if not dev.is_error:
        values.uuids.append(dev.body["uuid"])
        values.tokens.append(dev.body["token"])
        values.ints += [dev.body["group_id"], dev.body["default_domain_id"]]
        values.ints.append(dev.body["default_pasid"])
    mdev = call(Command.MDEV_CREATE, {"parent": "siov_test", "type_id": "siov_test-1"})
    if not mdev.is_error:  # instances are shared: another fuzzer may hold the last one
        values.uuids.append(mdev.body["uuid"])
        values.ints += [mdev.body["group_id"], mdev.body["default_pasid"]]
    dom = call(Command.DOMAIN_ALLOC, {})
    if not dom.is_error:
        domain = dom.body["domain_id"]
        values.ints.append(domain)
        if not dev.is_error:
            call(Command.ATTACH_DEVICE, {"domain": domain, "device": dev.body["uuid"]})
            call(Command.MAP, {"domain": domain, "phys": region.body["phys"], "size": MiB})
    return msg_id


# ---- fds to attach ----------------------------------------------------------------------------


def make_fds(rng: random.Random, count: int) -> list[int]:
    return fds_of_kinds([rng.randrange(4) for _ in range(count)], rng.choice([4096, 65536]))


def fds_of_kinds(kinds: Sequence[int], memfd_size: int = 4096) -> list[int]:
    """Pipes (0), memfds (1), sockets (2) and /dev/null (3): kinds a daemon might mistake for
    memory, or leak."""
    out: list[int] = []
    for kind in kinds:
        if kind == 0:
            r, w = os.pipe()
            out.append(w)
            os.close(r)
        elif kind == 1:
            out.append(memfd(memfd_size))
        elif kind == 2:
            a, b = socket.socketpair()
            out.append(a.detach())
            b.close()
        else:
            out.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return out


# ---- the mutation fuzzer's connections -----------------------------------------------------------


def build_plan(
    rng: random.Random, values: corpus.Values, first_id: int, conn_no: int
) -> tuple[Plan, list[int]]:
    """Frames for one connection: valid ones (real work), mutated ones, token PINGs, fds, and
    (in most connections) one frame whose header breaks the framing, maybe with more after it."""
    plan = Plan()
    fds_made: list[int] = []
    donors: list[bytes] = []
    n = rng.randrange(50, 700)
    breaker = rng.randrange(1, n + 1) if rng.random() < 0.6 else None
    msg_id = first_id
    i = 0
    while i < n:
        i += 1
        msg_id = (msg_id + 1) & 0xFFFF
        roll = rng.random()
        if roll < 0.04:
            payload = f"token-{conn_no}-{i}".encode() + rng.randbytes(rng.randrange(0, 64))
            plan.add(frame(msg_id, Command.PING, body({"payload": payload})), token=True)
            continue
        command, data = corpus.valid_frame(rng, values, msg_id)
        fds: list[int] = []
        if command == Command.MEM_REGISTER and rng.random() < 0.8:
            fds = [memfd(rng.choice([4096, 65536]))]
            data = frame(msg_id, command, body({"size": os.fstat(fds[0]).st_size}))
        donors.append(data)
        if len(donors) > 32:
            donors.pop(0)
        if roll < 0.30:
            if rng.random() < 0.05:
                data = corpus.set_header(data, flags=0x10)  # no-reply: nothing may come back
        else:
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                data = corpus.mutate(data, rng, donors, values)
        if i == breaker:
            data = corpus.break_header(data, rng)
            n = min(n, i + rng.randrange(1, 6))  # a few frames after it, never read
        if rng.random() < 0.03:
            fds += make_fds(rng, rng.choice([1, 1, 2, 3, 8, 9, 12]))
        fds_made += fds
        plan.add(data, tuple(fds))
    return plan, fds_made


def run_connection(daemon: FuzzDaemon, rng: random.Random, conn_no: int) -> Tally:
    """One fuzz connection from connect to close, checked frame by frame."""
    roll = rng.random()
    role: str | None = "user" if roll < 0.80 else "admin" if roll < 0.92 else None
    negotiate = roll < 0.97
    raw, msg_id = open_session(daemon, role, negotiate=negotiate)
    fds: list[int] = []
    try:
        values = corpus.Values()
        if role is not None and rng.random() < 0.3:
            msg_id = populate(raw, msg_id, values)
        plan, fds = build_plan(rng, values, msg_id, conn_no)
        if role is None:
            plan.tokens.clear()  # PING is refused before VERSION and AUTH: no echo to expect
        stream = plan.stream
        framed, consumed = frame_stream(stream)
        closes = bool(framed) and framed[-1].bad is not None
        data, closed = exchange(  # on the socket: the subject is the fuzz bytes as they are
            raw.sock, plan.chunks, replies_expected=expected_replies(framed), expect_close=closes
        )
        tally = account(stream, plan.frames, plan.tokens, data, closed)
        tally.frames_unread = sum(start >= consumed for start in plan.starts)
        tally.fds_sent = sum(len(c.fds) for c in plan.chunks)
        return tally
    finally:
        raw.close()
        for fd in fds:
            os.close(fd)


# ---- the well-behaved client ---------------------------------------------------------------


class Bystander(threading.Thread):
    """A user beside the fuzzers doing real work through the SDK, checking every answer.

    PINGs with payloads, DMA reads and writes through its own emulated device and domain, ATS
    translations, and map/unmap cycles of fresh buffers: each reply must be exactly right.
    """

    def __init__(self, daemon: FuzzDaemon) -> None:
        super().__init__(daemon=True)
        self.daemon_ = daemon
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with siov.BlockingClient(self.daemon_.path, key_path=self.daemon_.user_key) as c:
                self._work(c)
        except BaseException as exc:
            self.error = exc

    def _work(self, c: siov.BlockingClient) -> None:
        iova = 0x40_0000
        buf = c.alloc(2 * MiB)
        dev = c.register_device("bystander").uuid
        dom = c.alloc_domain()
        c.attach_device(dom, dev)
        assert c.map(dom, buf.phys, 2 * MiB, iova=iova) == iova
        buf.view[:] = bytes(range(256)) * (2 * MiB // 256)
        i = 0
        while not self.stop.is_set():
            i += 1
            payload = i.to_bytes(8, "little") * (1 + i % 64)
            assert c.ping(payload) == payload
            off = (i * 4096 + i % 4000) % (2 * MiB - 64)
            assert c.dma_read(dev, iova + off, 64) == bytes(buf.view[off : off + 64])
            data = i.to_bytes(4, "little") * 16
            assert c.dma_write(dev, iova + off, data) == 64
            assert bytes(buf.view[off : off + 64]) == data
            out = c.translate(dev, iova, 2 * MiB)
            assert out.runs == [
                TranslateRun(iova=iova, phys=buf.phys, length=2 * MiB, prot=3, page_size=2 * MiB)
            ]
            assert out.translated == 2 * MiB and out.fault is None
            if i % 10 == 0:
                extra = c.alloc(64 * 1024)
                try:
                    at = c.map(dom, extra.phys, 64 * 1024)
                    assert c.iova_to_phys(dom, at + 4096) == extra.phys + 4096
                    assert c.unmap(dom, at, 64 * 1024) == 64 * 1024
                    c.unregister(extra)
                finally:
                    extra.close()
            self.rounds = i
        buf.close()

    def finish(self, timeout: float = 30.0) -> int:
        """Stop, and return the rounds completed; any wrong answer fails here."""
        self.stop.set()
        self.join(timeout)
        assert not self.is_alive(), "the bystander got stuck: a request was never answered"
        if self.error is not None:
            raise AssertionError(f"bystander failed: {self.error!r}") from self.error
        assert self.rounds > 0, "the bystander completed no round"
        return self.rounds


# ---- the hypothesis fuzzer's connections -------------------------------------------------------


def run_batch(daemon: FuzzDaemon, batch: Batch, conn_no: int) -> Tally:
    """One connection carrying a hypothesis batch, bracketed by token PINGs, checked like the
    mutation fuzzer's."""
    raw, _ = open_session(daemon, batch.role)
    fds: list[int] = []
    try:
        plan = Plan()

        def token(where: str) -> None:
            payload = f"hyp-{conn_no}-{where}".encode()
            plan.add(frame(0xFFFF, Command.PING, body({"payload": payload})), token=True)

        token("first")
        for f in batch.frames:
            made = fds_of_kinds(f.fd_kinds)
            fds += made
            plan.add(f.data, tuple(made))
        token("last")
        if batch.breaker is not None:
            plan.add(batch.breaker)
        if batch.role is None:
            plan.tokens.clear()
        stream = plan.stream
        framed, consumed = frame_stream(stream)
        closes = bool(framed) and framed[-1].bad is not None
        data, closed = exchange(  # on the socket: the subject is the fuzz bytes as they are
            raw.sock, plan.chunks, replies_expected=expected_replies(framed), expect_close=closes
        )
        tally = account(stream, plan.frames, plan.tokens, data, closed)
        tally.frames_unread = sum(start >= consumed for start in plan.starts)
        tally.fds_sent = len(fds)
        return tally
    finally:
        raw.close()
        for fd in fds:
            os.close(fd)
