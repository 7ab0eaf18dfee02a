"""Figures of the hostile world: the worst PING round trip of a bystander during each attack.

Every attack of :mod:`tests.attacks` runs against a fresh daemon with a bystander PINGing every
50 ms (:mod:`tests.bystander`). The baseline is the same bystander's worst PING on the same
daemon in the second before the attack; the target is 50 ms, whatever the attack. An attack
that cannot run on this machine (hugetlb without root) is reported with the reason and no
target.
"""

from __future__ import annotations

from collections.abc import Callable

import tests.attacks_work  # noqa: F401  (registers the long-work attacks)
from tests.attacks import ATTACKS, run_attack

from .common import Figure, figure

TARGET = "<= 50"


def _figure(name: str) -> Callable[[], Figure]:
    def run() -> Figure:
        spec = ATTACKS[name]
        fig = f"bystander_ping_worst_ms_{name}"
        reason = spec.needs()
        if reason is not None:
            return figure(fig, float("nan"), "ms", None, None, note=f"not run: {reason}")
        out = run_attack(name)
        note = spec.doc
        if not out.alive:
            note = f"the daemon died (exit {out.returncode}); {note}"
        if out.under.error:
            note = f"bystander: {out.under.error}; {note}"
        return figure(
            fig, round(out.under.worst_ms, 1), "ms", round(out.baseline.worst_ms, 1), TARGET, note
        )

    return run


FIGURES = {f"bystander_ping_worst_ms_{name}": _figure(name) for name in ATTACKS}
