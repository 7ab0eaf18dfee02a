"""A work budget: how much a model call may do before it hands control back.

Long work (a 2 GiB compare, a BATCH of 1024 sub-descriptors, a 64 GiB map in 4 KiB pages) runs
in bounded slices. After each slice the model charges what it did; once the budget is spent it
stops at the next point it can resume from and returns that point as its outcome. The service
layer decides the budget (a byte count and, optionally, a clock check it injects): the model
itself never reads a clock, so a unit test with a byte budget is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

#: A budget nobody runs out of (the default of model calls made without one).
UNLIMITED: Final = 1 << 62


class Budget:
    """Work left in this turn, in bytes of data touched (or their equivalent)."""

    __slots__ = ("_expired", "left", "spent")

    def __init__(self, work: int = UNLIMITED, expired: Callable[[], bool] | None = None) -> None:
        self.left = work
        self.spent = 0
        self._expired = expired

    def charge(self, amount: int) -> bool:
        """Count ``amount`` of work done; True once the turn is used up (the caller stops at
        its next resumable point)."""
        self.left -= amount
        self.spent += amount
        if self.left <= 0:
            return True
        expired = self._expired
        return expired is not None and expired()

    @property
    def untimed(self) -> bool:
        """No clock check: only the byte count ends the turn."""
        return self._expired is None

    @property
    def exhausted(self) -> bool:
        if self.left <= 0:
            return True
        expired = self._expired
        return expired is not None and expired()


def unlimited() -> Budget:
    return Budget()
