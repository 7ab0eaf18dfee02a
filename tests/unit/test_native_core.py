"""The native executor core: built and used (under CI), the same tables as the Python model,
its page cache dropped when the IOTLB moves, and the Python executor when it is off."""

from __future__ import annotations

import mmap
import os

import pytest

from siov import dsa
from siov_protocol.dsa import DsaCompStatus, DsaOpcode
from siovd.model.accel import Completed, Executor, WorkItem, embedded_default, fastpath
from siovd.model.accel.checks import SPECS
from tests.unit.iommu_env import RW, Env

PAGE = 4096
MiB = 1 << 20


def test_under_ci_the_native_core_is_built_and_on() -> None:
    if os.environ.get("CI") != "true":
        assert Executor().native == fastpath.ENABLED  # outside CI: whatever this build has
        return
    assert fastpath.AVAILABLE, fastpath.IMPORT_ERROR
    assert fastpath.ENABLED and Executor().native


def test_the_native_validation_table_is_the_models() -> None:
    if not fastpath.AVAILABLE:
        pytest.fail(f"native core missing: {fastpath.IMPORT_ERROR}")
    assert fastpath.native is not None
    for opcode in fastpath.OPCODES:
        assert fastpath.native.spec(opcode) == SPECS[opcode], hex(opcode)
    assert fastpath.native.spec(DsaOpcode.BATCH) is None  # BATCH entries, never a BATCH


def test_the_daemon_runs_submitted_descriptors_natively() -> None:
    """SUBMIT through the accelerator runtime (no socket): the executor it built runs 4 KiB
    MEMMOVEs in the native core and the data and records are right."""
    from siovd.host.config import from_dict
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session

    model = Daemon(from_dict({}), state_dir="")
    session = Session()
    model.open_session(session)
    memory = mmap.mmap(-1, 4 * MiB)
    try:
        device = model.bus.create_mdev(session.id, "dsa0", "dsa-1dwq")
        region = model.memory.add_region(memoryview(memory), session.id)
        assert device.group is not None
        model.iommu.map(session.id, device.group.domain.id, 0, region.base, 4 * MiB, 3)
        memory[: 8 * PAGE] = bytes(range(256)) * (8 * PAGE // 256)
        runtime = model.accel_runtime
        state = runtime.state(session, device.uuid)
        blob = b"".join(
            dsa.memmove(MiB + i * PAGE, i * PAGE, PAGE, completion=3 * MiB + 32 * i)
            for i in range(8)
        )
        accepted, _, _, _ = runtime.submit(state, blob)  # warms the IOTLB and the device TLB
        before = runtime.executor.native_runs
        accepted, _, _, _ = runtime.submit(state, blob)
        assert accepted == 8
        assert runtime.executor.native_runs - before == (8 if fastpath.ENABLED else 0)
        assert memory[MiB : MiB + 8 * PAGE] == memory[: 8 * PAGE]
        assert all(memory[3 * MiB + 32 * i] == DsaCompStatus.SUCCESS for i in range(8))
        if os.environ.get("CI") == "true":
            assert runtime.executor.native_runs - before == 8
    finally:
        model.release(session)


def _world() -> tuple[Env, object, int]:
    env = Env()
    dev = env.mdev(1)
    dom = env.default_domain(dev)
    region = env.region(1, 4 * MiB)
    for page in range(4):  # page by page: each can be unmapped on its own
        env.iommu.map(1, dom, 0x10_0000 + page * PAGE, region.base + page * PAGE, PAGE, RW)
    return env, env.iommu.dma_space(dev, dev.default_pasid), dom


@pytest.mark.parametrize("native", [False, True])
def test_an_unmap_reaches_the_native_path_at_once(native: bool) -> None:
    """After an unmap (an IOTLB invalidation) the page cache is gone: the same MEMMOVE that
    ran natively now faults where the Python executor faults it."""
    if native and not fastpath.AVAILABLE:
        pytest.fail(f"native core missing: {fastpath.IMPORT_ERROR}")
    env, space, dom = _world()
    try:
        executor = Executor(native=native)
        wq = embedded_default().wqs[0]
        desc = dsa.memmove(0x10_2000, 0x10_0000, PAGE, completion=0x10_3000)
        for seq in range(2):  # the first fills the IOTLB (in Python), the second hits it
            first = executor.run(WorkItem(wq, desc, 0, seq, None, None), space)  # type: ignore[arg-type]
            assert isinstance(first, Completed) and first.raw[0] == DsaCompStatus.SUCCESS
        assert executor.native_runs == (1 if native else 0)
        env.iommu.unmap(1, dom, 0x10_2000, PAGE)
        again = executor.run(WorkItem(wq, desc, 0, 2, None, None), space)  # type: ignore[arg-type]
        assert isinstance(again, Completed)
        assert again.raw[0] == DsaCompStatus.PAGE_FAULT_NOBOF | dsa.DSA_COMP_STATUS_WRITE
        assert executor.native_runs == (1 if native else 0)
        assert [record.iova for _, record in env.faults] == [0x10_2000]
    finally:
        env.close()


def test_two_threads_run_natively_at_once() -> None:
    """The data work releases the GIL: two engines' executors on two threads, each with its
    own requester, both run natively and both get their data right."""
    import threading

    if not fastpath.AVAILABLE:
        pytest.fail(f"native core missing: {fastpath.IMPORT_ERROR}")
    worlds = [_world() for _ in range(2)]
    try:
        executors = [Executor(native=True) for _ in worlds]
        wq = embedded_default().wqs[0]
        errors: list[BaseException] = []

        def engine(index: int) -> None:
            _, space, _ = worlds[index]
            try:
                for seq in range(400):
                    desc = dsa.fill(0x10_1000, index + 1, PAGE, completion=0x10_3000)
                    done = executors[index].run(WorkItem(wq, desc, 0, seq, None, None), space)  # type: ignore[arg-type]
                    assert isinstance(done, Completed) and done.raw[0] == DsaCompStatus.SUCCESS
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        threads = [threading.Thread(target=engine, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for index, (env, _, _) in enumerate(worlds):
            region = env.memory.regions(1)[0]
            assert bytes(region.buf[PAGE : 2 * PAGE]) == (index + 1).to_bytes(8, "little") * 512
            assert executors[index].native_runs >= 399  # the first one warms the IOTLB
    finally:
        for env, _, _ in worlds:
            env.close()
