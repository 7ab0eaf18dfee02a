"""Random vfio-user messages at an exposed mdev: each gets its reply (or, posted, none), the
endpoint keeps serving, and the daemon and a bystander client are unharmed."""

from __future__ import annotations

import os
import random
import struct

import siov
from siov_protocol import vfio_user as vu
from tests.daemonproc import logged_siovd
from tests.helpers import settle
from tests.vfio_user_client import VfioUserClient

MESSAGES = int(os.environ.get("SIOV_VFIO_USER_FUZZ", "3000"))
SEED = int(os.environ.get("SIOV_FUZZ_SEED", "13"))


def payload(rng: random.Random, cmd: int) -> bytes:
    """Mostly plausible structs with random fields, sometimes garbage of random length."""
    if rng.random() < 0.3:
        return rng.randbytes(rng.choice([0, 1, 3, 8, 15, 24, 31, 33, 200]))
    if cmd in (vu.Cmd.REGION_READ, vu.Cmd.REGION_WRITE):
        region = rng.choice([0, 0, 2, 2, 7, 1, 9, 2**32 - 1])
        count = rng.choice([1, 2, 4, 8, 8, 64, 0, 1 << 21])
        offset = rng.choice([0, 0xA0, 0x98, 0x500, 0x1000, 0xFFFC, 1 << 40]) + rng.randrange(64)
        data = rng.randbytes(min(count, 64)) if cmd == vu.Cmd.REGION_WRITE else b""
        return vu.pack_region_access(offset, region, count, data)
    if cmd == vu.Cmd.DMA_MAP:
        return struct.pack(
            "<IIQQQ", 32, rng.randrange(8), 0, rng.randrange(1 << 48), rng.randrange(1 << 30)
        )
    if cmd == vu.Cmd.DMA_UNMAP:
        return struct.pack("<IIQQ", 24, rng.randrange(4), rng.randrange(1 << 48), 1 << 30)
    if cmd == vu.Cmd.DEVICE_SET_IRQS:
        return struct.pack("<IIIII", 20, rng.randrange(64), rng.randrange(6), 0, rng.randrange(4))
    return struct.pack("<IIII", rng.choice([0, 16, 32, 2**32 - 1]), 0, rng.randrange(12), 0)


def test_random_vfio_user_messages() -> None:
    rng = random.Random(SEED)
    commands = [*list(vu.Cmd), 0, 14, 19, 0xFFFF]
    with (
        logged_siovd() as daemon,
        siov.BlockingClient(daemon.path) as owner,
        siov.BlockingClient(daemon.path) as bystander,
    ):
        mdev = owner.create_mdev("dsa0", "dsa-1dwq").uuid
        path = os.path.join(daemon.dir, "f.sock")
        owner.vfio_user_expose(mdev, path)
        answered = errors = 0
        fds_before = daemon.fds()
        with VfioUserClient(path) as c:
            c.negotiate()
            for _ in range(MESSAGES):
                cmd = rng.choice(commands)
                if cmd == vu.Cmd.VERSION:
                    continue
                fds: tuple[int, ...] = ()
                if rng.random() < 0.1:  # an eventfd or two, on any command
                    fds = tuple(os.eventfd(0) for _ in range(rng.choice([1, 2])))
                try:
                    msg = c.request(cmd, payload(rng, cmd), fds)
                finally:
                    for fd in fds:
                        os.close(fd)
                answered += 1
                errors += bool(msg.flags & vu.FLAG_ERROR)
                if msg.flags & vu.FLAG_ERROR:
                    assert msg.payload == b"" and msg.error_no > 0
        assert answered > MESSAGES // 2 and 0 < errors < answered
        assert bystander.ping(b"ok") == b"ok"

        def endpoint() -> dict[str, int]:
            return dict((owner.stats().vfio_user or {})[mdev])

        settle(lambda: not endpoint()["connected"], "the endpoint saw the client leave")
        # every fd it was given is closed again (or, as an MSI-X eventfd, with the client)
        settle(lambda: daemon.fds() <= fds_before, "the daemon kept none of the fuzzer's fds")
        with VfioUserClient(path) as c:  # the endpoint serves the next client
            c.negotiate()
            assert c.read32(vu.PCI_CONFIG_REGION, 0) == 0x0B258086
        stats = endpoint()
        assert stats["messages"] >= answered and stats["maps"] == 0
        assert daemon.alive() and not daemon.failures_logged()
