"""How many file descriptors the daemon can need, from its limits, against RLIMIT_NOFILE.

A region holds no fd (the memfd is closed once mapped), so what the daemon holds open is:

* :data:`BASE_FDS` of its own (listener, epoll and wakeup fds, log, state lock, closer);
* two per connection (its socket, and the dup the fast write path uses), ``server.max_clients``
  of them;
* the fds of messages whose bytes have not all arrived, at most ``limits.pending_fds`` per
  connection (and ``limits.uid_pending_fds`` per uid), plus one ``recvmsg`` worth
  (:data:`ONE_RECVMSG`, the most SCM_RIGHTS carries) before the cap is checked;
* two interrupt eventfds per accelerator mdev; a DSA device has at most ``total_wq_size +
  max_wqs`` mdevs (each shared-WQ mdev takes a slot of a WQ's size, each dedicated one a WQ).

The soft limit is raised to what that needs (up to the hard limit) at start; when even the hard
limit is short the daemon says how many clients the limit allows at their worst and serves on
(an accept or receive that runs out of fds is refused, counted and retried, never fatal).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from siovd.host.config import Config

BASE_FDS = 64
ONE_RECVMSG = 253
FDS_PER_CONNECTION = 2
EVENTFDS_PER_MDEV = 2


@dataclass(frozen=True)
class FdBudget:
    need: int
    per_client: int  # what one more connection can cost at its worst
    fixed: int  # what does not grow with connections
    soft: int  # RLIMIT_NOFILE after the check
    hard: int
    raised_from: int | None  # the soft limit before, when the check raised it
    error: str | None  # why the soft limit could not be raised (setrlimit's complaint)

    @property
    def clients_allowed(self) -> int:
        """Connections that fit the soft limit if each holds all it may."""
        return max(0, (self.soft - self.fixed) // self.per_client)

    @property
    def enough(self) -> bool:
        return self.soft >= self.need

    def message(self, cfg: Config) -> str:
        text = (
            f"RLIMIT_NOFILE {self.soft} (hard {self.hard}); the limits need up to {self.need} "
            f"fds: {self.fixed} fixed + server.max_clients {cfg.server.max_clients} x "
            f"({FDS_PER_CONNECTION} + limits.pending_fds {cfg.limits.pending_fds})"
        )
        if not self.enough:
            text += (
                f"; the limit allows {self.clients_allowed} clients at their worst: raise "
                "LimitNOFILE (ulimit -n) or lower server.max_clients / limits.pending_fds"
            )
        return text


def accel_eventfds(mdev_bound: int) -> int:
    return EVENTFDS_PER_MDEV * mdev_bound


def fd_need(cfg: Config, mdev_bound: int) -> tuple[int, int, int]:
    """``(need, fixed, per_client)`` for ``cfg`` with at most ``mdev_bound`` accelerator
    mdevs."""
    per_client = FDS_PER_CONNECTION + cfg.limits.pending_fds
    fixed = BASE_FDS + ONE_RECVMSG + accel_eventfds(mdev_bound)
    return fixed + cfg.server.max_clients * per_client, fixed, per_client


def check_nofile(cfg: Config, mdev_bound: int) -> FdBudget:
    """Raise the soft RLIMIT_NOFILE to what the limits need (never past the hard limit)."""
    need, fixed, per_client = fd_need(cfg, mdev_bound)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised_from: int | None = None
    error: str | None = None
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (OSError, ValueError) as exc:  # e.g. a seccomp filter without @resources
                error = str(exc)
            else:
                raised_from, soft = soft, target
    return FdBudget(need, per_client, fixed, soft, hard, raised_from, error)
