"""DEVICE_SET_IRQS's rules (libvfio-user irq.c) as the accelerator mdev's model applies them."""

from __future__ import annotations

import errno

import pytest

from siov_protocol.messages_accel import (
    IRQ_MSIX,
    IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
)
from siovd.model.accel.irqs import IrqPlan, plan_set_irqs
from siovd.model.errors import SiovError

TRIGGER = IRQ_SET_ACTION_TRIGGER


def refused(*args: object) -> str:
    with pytest.raises(SiovError) as info:
        plan_set_irqs(*args)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    return info.value.message


def test_each_valid_request_gets_its_plan() -> None:
    none, bool_, efd = IRQ_SET_DATA_NONE, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD
    assert plan_set_irqs(none | TRIGGER, IRQ_MSIX, 0, 0, 0, None) == IrqPlan("disable")
    assert plan_set_irqs(efd | TRIGGER, IRQ_MSIX, 0, 2, 2, None) == IrqPlan("install", (0, 1))
    assert plan_set_irqs(none | TRIGGER, IRQ_MSIX, 1, 1, 0, None) == IrqPlan("fire", (1,))
    assert plan_set_irqs(bool_ | TRIGGER, IRQ_MSIX, 0, 2, 0, b"\0\1") == IrqPlan("fire", (1,))
    assert plan_set_irqs(none | TRIGGER, 0, 0, 0, 0, None) == IrqPlan("disable", msix=False)


def test_each_invalid_request_names_its_rule() -> None:
    none, efd = IRQ_SET_DATA_NONE, IRQ_SET_DATA_EVENTFD
    assert "unknown bits" in refused(1 << 12 | none | TRIGGER, IRQ_MSIX, 0, 1, 0, None)
    assert "exactly one" in refused(none | efd | TRIGGER, IRQ_MSIX, 0, 1, 0, None)
    assert "IRQ index" in refused(none | TRIGGER, 9, 0, 1, 0, None)
    assert "only with DATA_EVENTFD" in refused(none | TRIGGER, IRQ_MSIX, 0, 1, 1, None)
    assert "masked" in refused(none | 8, IRQ_MSIX, 0, 1, 0, None)  # ACTION_MASK
    assert "count 0" in refused(efd | TRIGGER, IRQ_MSIX, 0, 0, 0, None)
    assert "it has 2" in refused(none | TRIGGER, IRQ_MSIX, 1, 2, 0, None)
    assert "one per vector" in refused(efd | TRIGGER, IRQ_MSIX, 0, 2, 1, None)
    assert "DATA_BOOL needs 2 bytes" in refused(IRQ_SET_DATA_BOOL | TRIGGER, IRQ_MSIX, 0, 2, 0, b"")
