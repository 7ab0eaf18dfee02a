"""AccelRuntime settles a turn's outcomes in order, counting runs of plain completions at once;
what it counts and signals is the same as settling one by one."""

from __future__ import annotations

import mmap

from siov import dsa
from siov_protocol.dsa import IDXD_OP_FLAG_RCI
from siovd.host.config import from_dict
from siovd.service.daemon import Daemon
from siovd.service.session import Session

MIB = 1 << 20


def test_a_submit_of_plain_and_interrupting_descriptors_settles_every_one() -> None:
    model = Daemon(from_dict({}), state_dir="")
    session = Session()
    model.open_session(session)
    device = model.bus.create_mdev(session.id, "dsa0", "dsa-1dwq")
    memory = mmap.mmap(-1, 4 * MIB)
    region = model.memory.add_region(memoryview(memory), session.id)
    assert device.group is not None
    model.iommu.map(session.id, device.group.domain.id, 0, region.base, 4 * MIB, 3)
    runtime = model.accel_runtime
    state = runtime.state(session, device.uuid)
    records = 2 * MIB
    blob = []
    for i in range(48):
        flags = IDXD_OP_FLAG_RCI if i % 5 == 4 else 0  # every fifth one interrupts
        if flags:
            blob.append(dsa.noop(completion=records + 32 * i, flags=flags, int_handle=0))
        else:
            blob.append(dsa.memmove(MIB + i * 4096, i * 4096, 4096, completion=records + 32 * i))
    accepted, retry, dropped, _ = runtime.submit(state, b"".join(blob))
    assert (accepted, retry, dropped) == (48, 0, 0)
    group = state.mdev.wq.group
    assert group is not None
    while runtime.run_group(group):  # the turns the engine tasks would run, if a slice ended
        pass
    view = memoryview(memory)
    assert all(view[records + 32 * i] == 1 for i in range(48))  # every record says SUCCESS
    assert runtime.stats.completed == 48
    assert runtime.outstanding(session.id) == 0 and state.outstanding == 0
    # No eventfd on vector 0: each interrupt went as EVENT_IRQ, in order among the counts.
    assert runtime.stats.irqs_event == 48 // 5
    assert len(session.events) == 48 // 5
    view.release()
    model.release(session)
