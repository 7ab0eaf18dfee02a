"""A bystander client: PINGs a daemon every 50 ms and keeps the worst round trip.

The hostile-world tests and ``bench/hostile_figures.py`` both use it the same way::

    with logged_siovd(config) as d, Bystander(d.path) as by:
        quiet = by.measure(lambda: time.sleep(1.0))      # the baseline: no attack
        under = by.measure(lambda: attack(d))            # the same client, during the attack
    under.assert_served()                                # served, within a generous bound

It is a raw client (no trio, no SDK) in a process of its own, so what it times is the daemon's
answer and little else (not the test process's GIL); a thread here reads its reports.
A PING outstanding when a window closes counts with the time it has
waited so far, so a daemon that stops answering shows as a huge worst case, not as no sample.
A PING that gets no reply within ``stall_s`` ends the bystander with an error that names it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from siov_protocol import Command
from tests.rawclient import RawClient, Refused

T = TypeVar("T")

#: Interval between the bystander's PINGs.
INTERVAL_S = 0.05
#: The liveness bound the tests assert: far above any scheduling noise on a loaded 2-core
#: machine, far below the stalls the attacks caused before they were fixed (seconds to forever).
LIVENESS_S = 2.0


@dataclass
class Window:
    """What the bystander saw between two instants."""

    pings: int
    worst_s: float
    error: str | None

    @property
    def worst_ms(self) -> float:
        return self.worst_s * 1000.0

    def assert_served(self, bound_s: float = LIVENESS_S) -> None:
        """The bystander was answered throughout: no error, at least one PING, none slower
        than ``bound_s`` (a liveness bound, not a performance target)."""
        assert self.error is None, f"bystander: {self.error}"
        assert self.pings > 0, "bystander: no PING completed in the window"
        assert self.worst_s < bound_s, (
            f"bystander: worst PING {self.worst_ms:.0f} ms exceeds the {bound_s:.1f} s bound"
        )

    def line(self, attack: str, baseline: Window | None = None) -> str:
        """One summary line: ``bystander_ping_worst_ms_<attack> = ...``."""
        text = f"bystander_ping_worst_ms_{attack} = {self.worst_ms:.1f} ms ({self.pings} PINGs)"
        if baseline is not None:
            text += f", baseline {baseline.worst_ms:.1f} ms"
        return text + (f", ERROR {self.error}" if self.error else "")


class Bystander(threading.Thread):
    """A negotiated connection that PINGs every ``interval_s`` until stopped."""

    def __init__(self, path: str, *, interval_s: float = INTERVAL_S, stall_s: float = 30.0):
        super().__init__(daemon=True, name="bystander")
        self.path = path
        self.interval_s = interval_s
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._started_ok = threading.Event()
        self._pings = 0
        self._worst = 0.0
        self._outstanding: float | None = None  # monotonic start of the PING in flight
        self._last_answered_start = 0.0
        self.error: str | None = None
        self.total_pings = 0
        self._proc: subprocess.Popen[str] | None = None

    # ---- the thread: reads what the bystander process reports ---------------------------

    def run(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        argv = [sys.executable, "-m", "tests.bystander", self.path]
        argv += [str(self.interval_s), str(self.stall_s)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        assert self._proc.stdout is not None
        try:
            for line in self._proc.stdout:
                kind, _, rest = line.strip().partition(" ")
                if kind == "ready":
                    self._started_ok.set()
                elif kind == "start":
                    with self._lock:
                        self._outstanding = float(rest)
                elif kind == "done":
                    start, rtt = (float(v) for v in rest.split())
                    with self._lock:
                        self._outstanding = None
                        self._pings += 1
                        self.total_pings += 1
                        self._worst = max(self._worst, rtt)
                        self._last_answered_start = start
                elif kind == "error":
                    self.error = rest
            if self.error is None and not self._halt.is_set():
                self.error = f"the bystander process ended (exit {self._proc.wait()})"
        finally:
            self._started_ok.set()

    # ---- the caller's side ----------------------------------------------------------------

    def __enter__(self) -> Bystander:
        self.start()
        self._started_ok.wait(self.stall_s)
        if self.error is not None:
            raise AssertionError(f"bystander could not start: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        self.join(self.stall_s + 5)

    def reset(self) -> Window:
        """Close the current window (returning it) and open a new one."""
        with self._lock:
            worst = self._worst
            if self._outstanding is not None:
                worst = max(worst, time.monotonic() - self._outstanding)
            window = Window(self._pings, worst, self.error)
            self._pings = 0
            self._worst = 0.0
        return window

    def measure(self, fn: Callable[[], T]) -> tuple[T, Window]:
        """Run ``fn`` and return its result with what the bystander saw meanwhile.

        The window closes only once a PING that started after ``fn`` returned has been
        answered, so a stall that outlives the attack is seen too (bounded by ``stall_s``).
        """
        self.reset()
        result = fn()
        done = time.monotonic()
        while self.is_alive() and time.monotonic() < done + self.stall_s + 1:
            with self._lock:
                if self._last_answered_start > done:
                    break
            time.sleep(0.01)
        return result, self.reset()


def ping_loop(path: str, interval_s: float, stall_s: float) -> None:
    """The bystander process: PING every ``interval_s``, report each on stdout (monotonic
    times, the clock every process shares): ``ready``, ``start T``, ``done T RTT``, ``error``.

    A process of its own, so the attacker's threads in the test process (and their GIL) do not
    show up in its round trips.
    """

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        with RawClient(path, stall_s, negotiate=True) as raw:
            say("ready")
            while True:
                start = time.monotonic()
                say(f"start {start!r}")
                raw.call(Command.PING)
                say(f"done {start!r} {time.monotonic() - start!r}")
                time.sleep(interval_s)
    except TimeoutError:
        say(f"error no reply to a PING within {stall_s:.0f} s")
    except (OSError, Refused) as exc:
        say(f"error connection failed: {exc}")


if __name__ == "__main__":
    ping_loop(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
