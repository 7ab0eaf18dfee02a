"""The accelerator: vfio-user device commands for accelerator mdevs, SUBMIT, PAGE_RESPONSE,
and accel-config style configuration (ACCEL_*; admin role where they change the device).

An accelerator mdev looks like a vfio-pci device with one WQ: region 0 (BAR0) is the read-only
register image, region 2 (BAR2) the WQ's four portal pages (write-only: 64-byte portal writes),
and MSI-X has two vectors: 0 for errors, 1 for completions (mdev-idxd.rst).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from siov_protocol import Command
from siov_protocol.messages import EMPTY, Empty
from siov_protocol.messages_accel import (
    DEVICE_FLAGS_PCI,
    NUM_IRQS,
    NUM_REGIONS,
    REGION_BAR0,
    REGION_BAR2,
    REGION_FLAG_READ,
    REGION_FLAG_WRITE,
    AccelConfigDevice,
    AccelConfigEngine,
    AccelConfigGroup,
    AccelConfigWq,
    AccelDevice,
    AccelEvlRead,
    AccelLoadConfig,
    AccelWq,
    DeviceInfo,
    DeviceInfoRequest,
    RegionInfo,
    RegionInfoRequest,
    RegionRead,
    RegionReadReply,
    RegionWrite,
    RegionWriteReply,
    SetIrqs,
    Submit,
    SubmitReply,
    WqInfo,
)
from siov_protocol.messages_iommu import PageResponse
from siov_protocol.replies import (
    AccelConfigDeviceReply,
    AccelConfigEngineReply,
    AccelConfigGroupReply,
    AccelConfigWqReply,
    AccelDevicesReply,
    AccelEvlReadReply,
    AccelLoadConfigReply,
    AccelSaveConfigReply,
)
from siovd.model.accel import BAR0_SIZE, MDEV_IRQ_COUNT
from siovd.model.accel.attrs import bitmap256_text
from siovd.model.accel.irqs import plan_set_irqs
from siovd.model.errors import SiovError
from siovd.service.accel_runtime import MdevState
from siovd.service.handlers.registry import Context, registry

# ---- vfio-user device commands ----------------------------------------------------------------


def _state(ctx: Context, uuid: str) -> MdevState:
    return ctx.daemon.accel_runtime.state(ctx.session, uuid)


@registry.command(Command.DEVICE_GET_INFO, DeviceInfoRequest)
def device_get_info(ctx: Context, req: DeviceInfoRequest) -> DeviceInfo:
    wq = _state(ctx, req.device).mdev.wq
    return DeviceInfo(
        flags=DEVICE_FLAGS_PCI,
        num_regions=NUM_REGIONS,
        num_irqs=NUM_IRQS,
        wq=WqInfo(
            name=wq.dev_name,
            mode=wq.mode,
            size=wq.size,
            threshold=wq.threshold if wq.mode == "shared" else 0,
            block_on_fault=bool(wq.block_on_fault),
            max_batch_size=wq.max_batch_size,
            max_transfer_size=wq.max_transfer_size,
        ),
    )


@registry.command(Command.DEVICE_GET_REGION_INFO, RegionInfoRequest)
def device_get_region_info(ctx: Context, req: RegionInfoRequest) -> RegionInfo:
    state = _state(ctx, req.device)
    if req.index >= NUM_REGIONS:
        raise SiovError(
            errno.EINVAL, f"region index {req.index}: the device has regions 0..{NUM_REGIONS - 1}"
        )
    flags, size = 0, 0  # vfio-user: a region of size 0 is not implemented
    if req.index == REGION_BAR0:
        flags, size = REGION_FLAG_READ, BAR0_SIZE
    elif req.index == REGION_BAR2:
        flags, size = REGION_FLAG_WRITE, state.parent.mdev_portal_size(state.uuid)
    return RegionInfo(index=req.index, flags=flags, size=size, offset=0)


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


@registry.command(Command.DEVICE_SET_IRQS, SetIrqs, max_fds=MDEV_IRQ_COUNT)
def device_set_irqs(ctx: Context, req: SetIrqs) -> Empty:
    """vfio-user's rules (libvfio-user irq.c): one data type and one action; eventfds only
    with DATA_EVENTFD and exactly one per vector; ``count`` 0 with DATA_NONE disables the
    whole index. MSI-X vectors cannot be masked. On any error the fds are closed."""
    state = _state(ctx, req.device)
    plan = plan_set_irqs(req.flags, req.index, req.start, req.count, len(ctx.fds), req.data)
    runtime = ctx.daemon.accel_runtime
    if plan.action == "disable":
        if plan.msix:
            state.close_irqs()
        return EMPTY
    if plan.action == "install":
        if not all(_is_eventfd(fd) for fd in ctx.fds):
            raise SiovError(errno.EINVAL, "every fd must be an eventfd")
        for fd in ctx.fds:
            # The daemon's interrupt writes must never block the loop: an eventfd at its
            # largest count (0xfffffffffffffffe) blocks a blocking write(2) until it is read.
            # O_NONBLOCK is on the open file, so the client's copy turns non-blocking too
            # (SPEC 8.12); a full eventfd then costs an EAGAIN, counted as irq_write_failures.
            os.set_blocking(fd, False)
        fds, ctx.fds[:] = list(ctx.fds), []
        runtime.set_irqs(state, req.start, fds)
        return EMPTY
    runtime.trigger(state, list(plan.vectors))
    return EMPTY


@registry.command(Command.REGION_READ, RegionRead)
def region_read(ctx: Context, req: RegionRead) -> RegionReadReply:
    state = _state(ctx, req.device)
    if req.region != REGION_BAR0:
        raise SiovError(errno.EINVAL, f"region {req.region} is not readable (BAR0 is region 0)")
    if req.offset + req.count > BAR0_SIZE:
        raise SiovError(
            errno.EINVAL, f"{req.offset:#x}+{req.count:#x} runs past BAR0's {BAR0_SIZE:#x} bytes"
        )
    image = state.parent.mdev_bar0(state.uuid)
    data = image[req.offset : req.offset + req.count]
    return RegionReadReply(region=req.region, offset=req.offset, count=req.count, data=data)


@registry.command(Command.REGION_WRITE, RegionWrite)
def region_write(ctx: Context, req: RegionWrite) -> RegionWriteReply:
    state = _state(ctx, req.device)
    if req.count is not None and req.count != len(req.data):
        raise SiovError(errno.EINVAL, f"count {req.count} but {len(req.data)} bytes of data")
    if req.region != REGION_BAR2:
        raise SiovError(
            errno.EINVAL,
            f"region {req.region} is not writable: write descriptors into the portals of "
            "BAR2 (region 2); configure the device with ACCEL_* commands",
        )
    result = ctx.daemon.accel_runtime.portal_write(state, req.offset, req.data, req.pasid)
    count = len(req.data)
    return RegionWriteReply(region=req.region, offset=req.offset, count=count, result=result)


# ---- submission -------------------------------------------------------------------------------


@registry.command(Command.SUBMIT, Submit)
def submit(ctx: Context, req: Submit) -> SubmitReply:
    runtime = ctx.daemon.accel_runtime
    state = runtime.state(ctx.session, req.device)
    accepted, retry, dropped, results = runtime.submit(
        state, req.descriptors, req.pasid, req.limited
    )
    return SubmitReply(accepted=accepted, retry=retry, dropped=dropped, results=results)


@registry.command(Command.PAGE_RESPONSE, PageResponse)
def page_response(ctx: Context, req: PageResponse) -> Empty:
    ctx.daemon.accel_runtime.page_response(ctx.session, req.request, req.code)
    return EMPTY


# ---- configuration ------------------------------------------------------------------------------


@registry.command(Command.ACCEL_LIST, Empty)
def accel_list(ctx: Context, req: Empty) -> AccelDevicesReply:
    devices = ctx.daemon.accel.to_json()
    _add_wq_users(ctx, devices)
    return AccelDevicesReply(devices=devices)


def _add_wq_users(ctx: Context, devices: list[dict[str, Any]]) -> None:
    """siov's extras on each enabled WQ of the listing: ``mdevs``, the mdevs using it with
    the PASIDs their DMA can be tagged with (the default PASID first, then per-PASID
    attaches: on a shared WQ each submission names one), and ``dropped`` (MOVDIR64B past a
    dedicated WQ's size, silently lost on hardware). A client sees its own mdevs; an admin
    every client's, as the other listings do."""
    daemon = ctx.daemon
    users: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for parent in daemon.dsa_parents.values():
        for uuid, mdev in parent.mdevs.items():
            try:
                device = daemon.bus.device(None if ctx.session.is_admin else ctx.session.id, uuid)
            except SiovError:
                continue  # another client's
            group = device.group
            attached = sorted(group.pasids) if group is not None else []
            users.setdefault((parent.device.name, mdev.wq.dev_name), []).append(
                {"uuid": uuid, "type_id": mdev.type_id, "pasids": [mdev.default_pasid, *attached]}
            )
    wqs = {(name, wq.dev_name): wq for name, dev in daemon.accel.devices.items() for wq in dev.wqs}

    def visit(node: Any, device: str) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, device)
        elif isinstance(node, dict):
            dev = node.get("dev")
            if isinstance(dev, str) and dev.startswith("wq") and "state" in node:
                wq = wqs.get((device, dev))
                if wq is not None and wq.enabled:
                    node["mdevs"] = users.get((device, dev), [])
                    node["dropped"] = wq.stats.dropped
                return
            for value in node.values():
                visit(value, device)

    for entry in devices:
        visit(entry, str(entry.get("dev", "")))


@registry.command(Command.ACCEL_SAVE_CONFIG, Empty)
def accel_save_config(ctx: Context, req: Empty) -> AccelSaveConfigReply:
    return AccelSaveConfigReply(config=ctx.daemon.accel.to_json(save=True))


@registry.command(Command.ACCEL_LOAD_CONFIG, AccelLoadConfig, admin=True)
def accel_load_config(ctx: Context, req: AccelLoadConfig) -> AccelLoadConfigReply:
    report = ctx.daemon.accel.load_config(req.config, enable=req.enable, force=req.force)
    return AccelLoadConfigReply(
        devices=ctx.daemon.accel.to_json(), messages=report.messages, enabled=report.enabled
    )


@registry.command(Command.ACCEL_EVL_READ, AccelEvlRead, admin=True)
def accel_evl_read(ctx: Context, req: AccelEvlRead) -> AccelEvlReadReply:
    """Consume entries of a device's event log, as its driver does (head moves, the
    interrupt-pending bit clears); ``arm`` asks for one EVENT_EVL at the next entry."""
    device = ctx.daemon.accel.device(req.device)
    log_ = device.event_log
    if log_ is None:
        raise SiovError(errno.ENXIO, f"{device.name} is not enabled: it has no event log")
    pending = log_.int_pending
    entries = log_.read(req.max)
    if req.arm:
        ctx.daemon.accel_runtime.evl_armed.setdefault(device.name, set()).add(ctx.session.id)
    return AccelEvlReadReply(
        size=log_.size,
        head=log_.head,
        tail=log_.tail,
        int_pending=pending,
        lost=log_.lost,
        entries=b"".join(entries),
    )


@registry.command(Command.ACCEL_CONFIG_DEVICE, AccelConfigDevice, admin=True)
def accel_config_device(ctx: Context, req: AccelConfigDevice) -> AccelConfigDeviceReply:
    device = ctx.daemon.accel.device(req.device)
    device.configure(req.attrs)
    return AccelConfigDeviceReply(
        dev=device.name,
        read_buffer_limit=device.read_buffer_limit,
        event_log_size=device.event_log_size,
    )


@registry.command(Command.ACCEL_CONFIG_GROUP, AccelConfigGroup, admin=True)
def accel_config_group(ctx: Context, req: AccelConfigGroup) -> AccelConfigGroupReply:
    group = ctx.daemon.accel.group(req.group)
    group.configure(req.attrs)
    return AccelConfigGroupReply(
        dev=group.dev_name,
        read_buffers_reserved=group.read_buffers_reserved,
        use_read_buffer_limit=int(group.use_read_buffer_limit),
        read_buffers_allowed=group.read_buffers_allowed,
        traffic_class_a=group.traffic_class_a,
        traffic_class_b=group.traffic_class_b,
    )


@registry.command(Command.ACCEL_CONFIG_ENGINE, AccelConfigEngine, admin=True)
def accel_config_engine(ctx: Context, req: AccelConfigEngine) -> AccelConfigEngineReply:
    engine = ctx.daemon.accel.engine(req.engine)
    engine.configure(req.attrs)
    return AccelConfigEngineReply(dev=engine.dev_name, group_id=engine.group_id)


@registry.command(Command.ACCEL_CONFIG_WQ, AccelConfigWq, admin=True)
def accel_config_wq(ctx: Context, req: AccelConfigWq) -> AccelConfigWqReply:
    wq = ctx.daemon.accel.wq(req.wq)
    wq.configure(req.attrs)
    return AccelConfigWqReply(
        dev=wq.dev_name,
        group_id=wq.group_id,
        mode=wq.mode,
        size=wq.size,
        type=wq.type,
        name=wq.name,
        driver_name=wq.driver_name,
        priority=wq.priority,
        prs_disable=int(wq.prs_disable),
        block_on_fault=int(wq.block_on_fault),
        threshold=wq.threshold,
        max_transfer_size=wq.max_transfer_size,
        max_batch_size=wq.max_batch_size,
        ats_disable=int(wq.ats_disable),
        op_config=bitmap256_text(wq.op_config),
    )


@registry.command(Command.ACCEL_ENABLE_DEVICE, AccelDevice, admin=True)
def accel_enable_device(ctx: Context, req: AccelDevice) -> Empty:
    ctx.daemon.accel.device(req.device).enable()
    return EMPTY


@registry.command(Command.ACCEL_DISABLE_DEVICE, AccelDevice, admin=True)
def accel_disable_device(ctx: Context, req: AccelDevice) -> Empty:
    ctx.daemon.accel.device(req.device).disable()
    return EMPTY


@registry.command(Command.ACCEL_ENABLE_WQ, AccelWq, admin=True)
def accel_enable_wq(ctx: Context, req: AccelWq) -> Empty:
    ctx.daemon.accel.wq(req.wq).enable()
    return EMPTY


@registry.command(Command.ACCEL_DISABLE_WQ, AccelWq, admin=True)
def accel_disable_wq(ctx: Context, req: AccelWq) -> Empty:
    ctx.daemon.accel.wq(req.wq).disable()
    return EMPTY
