"""Frame fuzzing against a live siovd subprocess.

Two generators: a seeded mutation fuzzer (valid frames from the schemas, then flipped bits,
truncations, splices, wrong commands and flags, lying sizes, hostile msgpack, wrong-typed
fields, random fds), several connections in parallel, each pipelining hundreds of frames; and
a hypothesis fuzzer whose frames are drawn field by field. For every connection an independent
framer predicts what the daemon must do, and the replies must match it exactly: every framed
message answered once (or not at all under the no-reply flag), a bad header answered with its
errno and then a close. Beside the fuzzers a well-behaved client does real work and checks
every answer. Afterwards the daemon is alive, logged no handler failure, and holds exactly the
fds and memory mappings it held before.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

import siov
from tests.fuzz.conftest import FRAMES, SEED, SENT, SUMMARY
from tests.fuzz.frame_strategies import Batch, batches
from tests.fuzz.runner import Bystander, FuzzDaemon, fuzz_daemon, run_batch, run_connection
from tests.fuzz.wire import Tally
from tests.helpers import settle

WORKERS = 4
MUTATION_SHARE = 0.97  # of FRAMES; the (slower to generate) hypothesis fuzzer sends the rest
HYPOTHESIS_FRAMES_PER_EXAMPLE = 8  # batches average about 10 frames; the total is asserted


@pytest.fixture(scope="module")
def daemon() -> Iterator[FuzzDaemon]:
    with fuzz_daemon() as d:
        yield d


class Baseline:
    """What the daemon holds with only an observer connected; it must come back to this."""

    def __init__(self, daemon: FuzzDaemon, observer: siov.BlockingClient) -> None:
        self.daemon = daemon
        self.observer = observer
        self.fds = daemon.fds()
        self.maps = daemon.memfd_maps()
        self.counts = self._counts()
        self.rss = daemon.rss_kib()

    def _counts(self) -> dict[str, int]:
        """Everything a session can own, and what the IOMMU holds for it."""
        counts = dict(self.observer.info().counts)
        iommu = self.observer.stats().iommu or {}
        counts.update({k: iommu[k] for k in ("pasids_allocated", "page_table_pages")})
        return counts

    def stop_host_mdevs(self) -> None:
        """A fuzzed MDEV_START may start a definition or a transient mdev: those are the
        host's, meant to outlive the connection that started them (mdevctl's semantics), so
        the operator stops them before the baseline is compared, as after any run."""
        for device in self.observer.devices(everything=True):
            if device.bus == "mdev":
                with contextlib.suppress(siov.SiovError):
                    self.observer.stop(device.uuid)

    def check(self) -> None:
        d = self.daemon
        self.stop_host_mdevs()
        settle(lambda: self._counts() == self.counts, f"objects back to {self.counts}")
        settle(lambda: d.fds() == self.fds, f"daemon fds back to {self.fds}")
        settle(lambda: d.memfd_maps() == self.maps, f"memfd mappings back to {self.maps}")
        assert self.daemon.alive()
        assert self.daemon.failures_logged() == []


def summary(name: str, tally: Tally, seconds: float, rss: tuple[int, int], rounds: int) -> str:
    errs = ", ".join(f"{e}:{n}" for e, n in sorted(tally.errnos.items()))
    return (
        f"{name}: {tally.frames_framed} frames read by the daemon ({tally.frames_built} built, "
        f"{tally.frames_unread} unread after a close) on {tally.connections} connections in "
        f"{seconds:.1f} s; {tally.replies} replies ({tally.error_replies} errors: {errs}), "
        f"{tally.no_reply} no-reply, {tally.closes} closes after a bad header, "
        f"{tally.tokens} token PINGs echoed, {tally.fds_sent} fds sent; bystander rounds "
        f"{rounds}; daemon RSS {rss[0] // 1024} -> {rss[1] // 1024} MiB"
    )


def test_mutation_fuzz(daemon: FuzzDaemon) -> None:
    target = int(FRAMES * MUTATION_SHARE)
    total = Tally()
    lock = threading.Lock()
    failures: list[BaseException] = []
    next_conn = iter(range(1 << 30))

    def worker() -> None:
        while True:
            with lock:
                if total.frames_framed >= target or failures:
                    return
                conn_no = next(next_conn)
            rng = random.Random(f"{SEED}-{conn_no}")
            try:
                tally = run_connection(daemon, rng, conn_no)
            except BaseException as exc:
                with lock:
                    failures.append(AssertionError(f"connection {conn_no} (seed {SEED}): {exc}"))
                    failures[-1].__cause__ = exc
                return
            with lock:
                total.add(tally)

    with siov.BlockingClient(daemon.path, key_path=daemon.admin_key) as observer:
        base = Baseline(daemon, observer)
        bystander = Bystander(daemon)
        bystander.start()
        start = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        if failures:
            raise failures[0]
        rounds = bystander.finish()
        rss_after = daemon.rss_kib()
        base.check()
    line = summary("mutation fuzzer", total, elapsed, (base.rss, rss_after), rounds)
    SUMMARY.append(line)
    SENT.append(total.frames_framed)
    print(line)
    assert total.frames_framed >= target, line
    assert total.closes > 0 and total.error_replies > 0 and total.tokens > 0, line


def test_hypothesis_fuzz(daemon: FuzzDaemon) -> None:
    target = FRAMES - int(FRAMES * MUTATION_SHARE)
    total = Tally()
    conn_no = iter(range(1 << 30))

    @settings(
        max_examples=max(20, target // HYPOTHESIS_FRAMES_PER_EXAMPLE),
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(batch=batches)
    def fuzz(batch: Batch) -> None:
        total.add(run_batch(daemon, batch, next(conn_no)))

    with siov.BlockingClient(daemon.path, key_path=daemon.admin_key) as observer:
        base = Baseline(daemon, observer)
        bystander = Bystander(daemon)
        bystander.start()
        start = time.monotonic()
        fuzz()
        elapsed = time.monotonic() - start
        rounds = bystander.finish()
        rss_after = daemon.rss_kib()
        base.check()
    line = summary("hypothesis fuzzer", total, elapsed, (base.rss, rss_after), rounds)
    SUMMARY.append(line)
    SENT.append(total.frames_framed)
    print(line)
    assert total.frames_framed >= target, line
    assert total.closes > 0 and total.error_replies > 0 and total.tokens > 0, line
