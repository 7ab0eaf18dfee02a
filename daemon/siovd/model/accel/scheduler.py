"""The engines of a group at work: which descriptor runs next, and for how long.

:meth:`Scheduler.run` is one turn of a group's engines under a
:class:`~siovd.model.budget.Budget`. Engines take descriptors from the group's WQs (WQ priority
arbitration is :meth:`Group.take`'s); a descriptor whose budget ran out mid-way
(:class:`~siovd.model.accel.outcome.Preempted`: a 2 GiB compare, a long batch) keeps its engine
and continues, where it stopped, in a later turn. A group has as many descriptors in progress
as it has engines: when every engine holds one, the oldest continues; otherwise an idle engine
takes new work first, as on the device, where a long transfer ties up one engine and not the
others. A preempted descriptor is still in flight in its WQ, so a DRAIN behind it waits for it.

The turn returns its outcomes in order; the caller (the service's adapter) counts them, writes
the interrupts and sends the page requests. Nothing here knows about sessions or the wire.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from siovd.model.accel import fastpath
from siovd.model.accel.device import Engine, Group
from siovd.model.accel.ops import DESC_COST, TIMED_ENTRIES, Executor, ResumeState
from siovd.model.accel.outcome import (
    Blocked,
    Completed,
    CompletedRun,
    PageResponse,
    Preempted,
    native_run_outcomes,
)
from siovd.model.accel.wq import WorkItem
from siovd.model.budget import Budget
from siovd.model.dma import DmaSpace

Outcome = Completed | Blocked | Preempted | CompletedRun
#: Where a work item's addresses are translated, or None when its submitter is gone (the item
#: is then cancelled, never run).
SpaceFor = Callable[[WorkItem], DmaSpace | None]


class Turn:
    """What one turn did: the outcomes in the order they happened, and whether work is left
    (queued in the group's WQs or in progress on its engines)."""

    __slots__ = ("more", "outcomes")

    def __init__(self, outcomes: list[Outcome], more: bool) -> None:
        self.outcomes = outcomes
        self.more = more


class Scheduler:
    """Runs every group's engines; keeps the descriptors in progress between turns."""

    def __init__(self, executor: Executor | None = None, runs: bool = False) -> None:
        """``runs``: run queued descriptors natively in runs (:meth:`Executor.run_queued`) and
        report their plain completions as :class:`CompletedRun` (what the service counts);
        without it every descriptor has its own outcome (what model tests look at)."""
        self.executor = executor if executor is not None else Executor()
        self.runs = runs and self.executor.native
        #: Descriptors a budget stopped, per group, oldest first.
        self.running: dict[Group, deque[Preempted]] = {}
        #: Descriptors each engine took (sysfs-like counters in STATS).
        self.engine_runs: dict[Engine, int] = {}
        #: Times a descriptor was stopped by its budget and continued later.
        self.preemptions = 0

    def in_progress(self, group: Group) -> int:
        running = self.running.get(group)
        return len(running) if running else 0

    def run(
        self, group: Group, budget: Budget, space_for: SpaceFor, engine: Engine | None = None
    ) -> Turn:
        """One turn: run descriptors until none is left or ``budget`` is spent. At least one
        step always runs, so every turn makes progress."""
        engines = [engine] if engine is not None else group.engines
        if not engines:
            return Turn([], False)
        slots = len(group.engines)
        running = self.running.get(group)
        if running is None:
            running = self.running[group] = deque()
        outcomes: list[Outcome] = []
        taken = 0
        execute = self.executor.run
        allowed = self.runs
        runs = allowed
        try:
            while True:
                item: WorkItem | None = None
                if len(running) < slots:
                    if runs:
                        ran, runs = self._run_queued(group, budget, space_for, outcomes)
                        if ran:
                            taken += ran
                            queued = any(wq.occupancy for wq in group.wqs)
                            if budget.charge(DESC_COST):
                                return Turn(outcomes, bool(running) or queued)
                            if not queued:
                                # Nothing queued: no run can start, and take() moves the
                                # arbitration past the empty WQs as it would one by one.
                                runs = False
                            continue
                    runs = allowed  # one step in Python, then runs again
                    item = group.take()
                if item is not None:
                    taken += 1
                    space = space_for(item)
                    if space is None:  # its submitter is gone; nothing runs on its behalf
                        item.wq.cancel(item)
                        continue
                    outcome = execute(item, space, budget)
                elif running:
                    current = running.popleft()
                    if space_for(current.item) is None:
                        current.item.wq.cancel(current.item)
                        continue
                    outcome = self.executor.proceed(current.state, budget)
                else:
                    return Turn(outcomes, False)
                self._settle(group, outcome)
                outcomes.append(outcome)
                if budget.charge(DESC_COST):
                    more = bool(running) or any(wq.occupancy for wq in group.wqs)
                    return Turn(outcomes, more)
        finally:
            self._count_runs(engines, taken)

    def _run_queued(
        self, group: Group, budget: Budget, space_for: SpaceFor, outcomes: list[Outcome]
    ) -> tuple[int, bool]:
        """A native run of the descriptors queued at the head of the group's WQ: how many ran
        (their budget charged but the last one's DESC_COST), and whether the next step may be
        a run too (False: the next descriptor needs Python)."""
        head = group.head()
        if head is None:
            return 0, False
        wq, cursor, credits = head
        # While the group's other WQs are empty, take() would come back around to this one
        # with fresh credits: the run may go on past them (Group.took accounts for it).
        alone = all(other is wq or not other.occupancy for other in group.wqs)
        allowed = wq.occupancy if alone else credits
        limit = min(wq.occupancy, allowed, max(1, -(-budget.left // DESC_COST)))
        if not budget.untimed:
            limit = min(limit, TIMED_ENTRIES)
        queued = wq.head_run(limit, fastpath.OPCODES)
        if queued is None:
            return 0, False
        first, descs = queued
        space = space_for(first)
        if space is None:
            return 0, False
        ran, fallback, record, written = self.executor.run_queued(first, descs, space, budget)
        if not ran:
            return 0, False
        group.took(ran, cursor, credits)
        last = wq.retire_run(ran)
        outcomes.extend(native_run_outcomes(first.owner, ran, last, record, written))
        return ran, not fallback

    def resume(
        self, state: ResumeState, response: PageResponse, budget: Budget | None = None
    ) -> Completed | Blocked | Preempted:
        """Continue a descriptor that waited for a page response; a budget that runs out
        leaves it in progress on its group like any other."""
        outcome = self.executor.resume(state, response, budget)
        group = state.item.wq.group
        self._settle(group, outcome)
        return outcome

    def _settle(self, group: Group | None, outcome: Outcome) -> None:
        if type(outcome) is Completed:
            outcome.item.wq.retire(outcome.item)
        elif type(outcome) is Preempted:
            self.preemptions += 1
            if group is None:  # its WQ left its group meanwhile: the work cannot go on
                outcome.item.wq.cancel(outcome.item)
            else:
                self.running.setdefault(group, deque()).append(outcome)

    def forget(self, owner: object) -> int:
        """The submitter ``owner`` is gone: its descriptors in progress are cancelled.
        Returns how many."""
        dropped = 0
        for group, running in self.running.items():
            kept: deque[Preempted] = deque()
            for current in running:
                if current.item.owner == owner:
                    current.item.wq.cancel(current.item)
                    dropped += 1
                else:
                    kept.append(current)
            self.running[group] = kept
        return dropped

    def _count_runs(self, engines: list[Engine], taken: int) -> None:
        runs = self.engine_runs
        count = len(engines)
        for index, current in enumerate(engines):
            number = (taken - index + count - 1) // count
            if number > 0:
                runs[current] = runs.get(current, 0) + number
