"""The mdev bus: types, mdevs, external emulators' devices, groups."""

from __future__ import annotations

import errno

import structlog

from siov_protocol import Command
from siov_protocol.features import accelerator_refusal
from siov_protocol.messages import Empty, ListRequest
from siov_protocol.messages_iommu import (
    BusRegisterDevice,
    DeviceClaim,
    DeviceRef,
    GroupRef,
    MdevCreate,
)
from siov_protocol.replies import (
    DeviceDescription,
    GroupInfo,
    GroupListReply,
    GroupPasid,
    MdevListReply,
    MdevType,
    RegisteredDevice,
    TypesListReply,
)
from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu import Group
from siovd.model.owner import HOST
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


def group_info(group: Group) -> GroupInfo:
    info = group.info()
    # msgpack maps with integer keys do not survive strict_map_key decoders: use a list.
    pasids = info.pop("pasids")
    assert isinstance(pasids, dict)
    records = [GroupPasid(pasid=p, domain_id=d) for p, d in pasids.items()]
    return GroupInfo(**info, pasids=records)  # type: ignore[arg-type]


def describe(ctx: Context, device: Device) -> DeviceDescription:
    claimed = device.registrant not in (None, HOST) and device.owner != device.registrant
    return DeviceDescription(**ctx.daemon.bus.describe(device), claimed=claimed)  # type: ignore[arg-type]


def _check_mdev_limit(ctx: Context) -> None:
    daemon, session = ctx.daemon, ctx.session
    limit = daemon.config.limits.mdevs
    if len(daemon.bus.list(session.id)) >= limit:
        raise SiovError(errno.ENOSPC, f"limit reached: limits.mdevs = {limit}")
    # Per uid: one user's many connections cannot take every instance the bus offers.
    limit = daemon.config.limits.uid_mdevs
    ids = {s.id for s in daemon.uid_sessions(session.uid)}
    have = sum(1 for d in daemon.bus.list(None) if d.owner in ids)
    if have >= limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.uid_mdevs = {limit} (uid {session.uid} has {have})",
        )


@registry.command(Command.TYPES_LIST, Empty)
def types_list(ctx: Context, req: Empty) -> TypesListReply:
    return TypesListReply(
        types=[
            MdevType(
                parent=t.parent,
                type_id=t.info.type_id,
                name=t.info.name,
                description=t.info.description,
                device_api=t.info.device_api,
                available_instances=t.info.available_instances,
                pasid_bits=t.info.pasid_bits,
            )
            for t in ctx.daemon.bus.types(ctx.session.owner_filter)
        ]
    )


@registry.command(Command.MDEV_CREATE, MdevCreate)
def mdev_create(ctx: Context, req: MdevCreate) -> DeviceDescription:
    if req.parent in ctx.daemon.dsa_parents:
        why = accelerator_refusal(ctx.session.features, f"an mdev of parent {req.parent}")
        if why is not None:
            raise SiovError(*why)
    _check_mdev_limit(ctx)
    bus = ctx.daemon.bus
    device = bus.create_mdev(ctx.session.id, req.parent, req.type_id, req.uuid)
    log.info(
        "mdev created",
        mdev=device.uuid,
        type_id=req.type_id,
        pasid=device.default_pasid,
        group=device.group.id if device.group else None,
    )
    return describe(ctx, device)


@registry.command(Command.MDEV_REMOVE, DeviceRef)
def mdev_remove(ctx: Context, req: DeviceRef) -> Empty:
    ctx.daemon.bus.remove_mdev(ctx.session.id, req.uuid)
    log.info("mdev removed", mdev=req.uuid)
    return Empty()


@registry.command(Command.MDEV_LIST, ListRequest)
def mdev_list(ctx: Context, req: ListRequest) -> MdevListReply:
    bus = ctx.daemon.bus
    devices = bus.list(ctx.session.list_filter(req.all))
    if not req.all:
        # An emulator's own devices stay in its list while another client owns them.
        me = ctx.session.id
        devices += [d for d in bus.list(None) if d.registrant == me and d.owner != me]
    return MdevListReply(devices=[describe(ctx, d) for d in devices])


@registry.command(Command.BUS_REGISTER_DEVICE, BusRegisterDevice)
def bus_register_device(ctx: Context, req: BusRegisterDevice) -> RegisteredDevice:
    _check_mdev_limit(ctx)
    bus = ctx.daemon.bus
    device, token = bus.register_device(ctx.session.id, req.name, req.pasid_bits)
    log.info("device registered", mdev=device.uuid, name=req.name, pasid_bits=req.pasid_bits)
    return RegisteredDevice(**bus.describe(device), token=token)  # type: ignore[arg-type]


@registry.command(Command.BUS_UNREGISTER_DEVICE, DeviceRef)
def bus_unregister_device(ctx: Context, req: DeviceRef) -> Empty:
    ctx.daemon.bus.unregister_device(ctx.session.id, req.uuid)
    return Empty()


@registry.command(Command.DEVICE_CLAIM, DeviceClaim)
def device_claim(ctx: Context, req: DeviceClaim) -> DeviceDescription:
    bus = ctx.daemon.bus
    _check_claim_features(ctx, req.uuid)
    device = bus.claim_device(ctx.session.id, req.uuid, req.token)
    log.info("device claimed", mdev=device.uuid)
    ctx.daemon.tell_registrant(device, "claimed", ctx.session.client_name)
    return describe(ctx, device)


def _check_claim_features(ctx: Context, uuid: str) -> None:
    """A host accelerator mdev (a started definition) needs "dsa" to be claimed. Only a
    device anyone could claim is looked at, so the answer reveals nothing about others'."""
    try:
        device = ctx.daemon.bus.device(HOST, uuid)
    except SiovError:
        return
    if device.parent in ctx.daemon.dsa_parents:
        why = accelerator_refusal(ctx.session.features, f"claiming accelerator mdev {uuid}")
        if why is not None:
            raise SiovError(*why)


@registry.command(Command.GROUP_INFO, GroupRef)
def group_info_cmd(ctx: Context, req: GroupRef) -> GroupInfo:
    return group_info(ctx.daemon.iommu.group(ctx.session.id, req.group))


@registry.command(Command.GROUP_LIST, ListRequest)
def group_list(ctx: Context, req: ListRequest) -> GroupListReply:
    groups = ctx.daemon.iommu.groups(ctx.session.list_filter(req.all))
    return GroupListReply(groups=[group_info(g) for g in groups])
