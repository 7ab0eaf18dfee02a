"""accel-config's view of the devices: ``list`` / ``save-config`` JSON and ``load-config``.

The JSON is an array of device objects, ``"dev"`` always the first key (accel-config
``Documentation/accfg/accel-config-load-config.txt``); groups nest their WQs under
``grouped_workqueues`` and engines under ``grouped_engines``; components outside any group sit
in the device under ``ungrouped_engines`` and ``"ungrouped workqueues"`` (accel-config
``accfg/list.c`` spells them so). ``save`` leaves out what cannot be written back.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from siovd.model.accel import caps
from siovd.model.accel.attrs import as_bitmap256, bitmap256_text
from siovd.model.accel.device import (
    DEVICE_ATTR_ALIASES,
    DEVICE_ATTRS,
    GROUP_ATTR_ALIASES,
    GROUP_ATTRS,
    DsaDevice,
    Engine,
    Group,
    embedded_default,
)
from siovd.model.accel.wq import WQ_ATTRS, WorkQueue
from siovd.model.errors import SiovError

Json = dict[str, Any]

UNGROUPED_WQS: Final = "ungrouped workqueues"
UNGROUPED_ENGINES: Final = "ungrouped_engines"

# Keys `list` shows that describe the hardware or the state: accepted by load_config and ignored.
_DEVICE_READONLY: Final = frozenset(
    {
        "max_groups",
        "max_work_queues",
        "max_engines",
        "work_queue_size",
        "numa_node",
        "op_cap",
        "gen_cap",
        "version",
        "state",
        "max_read_buffers",
        "max_tokens",
        "max_batch_size",
        "ims_size",
        "max_transfer_size",
        "configurable",
        "pasid_enabled",
        "cdev_major",
        "clients",
        "errors",
        "mdevs",
        "iaa_cap",
    }
)
_GROUP_READONLY: Final = frozenset({"desc_progress_limit", "batch_progress_limit"})
_WQ_READONLY: Final = frozenset({"cdev_minor", "state", "clients", "occupancy"})


def wq_to_json(wq: WorkQueue, save: bool = False) -> Json:
    obj: Json = {
        "dev": wq.dev_name,
        "mode": wq.mode,
        "size": wq.size,
        "group_id": wq.group_id,
        "priority": wq.priority,
        "block_on_fault": int(wq.block_on_fault),
        "max_batch_size": wq.max_batch_size,
        "max_transfer_size": wq.max_transfer_size,
        "type": wq.type,
        "name": wq.name,
        "driver_name": wq.driver_name,
        "threshold": wq.threshold,
        "prs_disable": int(wq.prs_disable),
        "ats_disable": int(wq.ats_disable),
        "op_config": bitmap256_text(wq.op_config),
    }
    if not save:
        obj["state"] = "enabled" if wq.enabled else "disabled"
        obj["clients"] = wq.clients
        obj["occupancy"] = wq.occupancy
    return obj


def engine_to_json(engine: Engine) -> Json:
    return {"dev": engine.dev_name, "group_id": engine.group_id}


def group_to_json(group: Group, save: bool = False) -> Json:
    obj: Json = {"dev": group.dev_name, **group.config()}
    if group.wqs:
        obj["grouped_workqueues"] = [wq_to_json(wq, save) for wq in group.wqs]
    if group.engines:
        obj["grouped_engines"] = [engine_to_json(engine) for engine in group.engines]
    return obj


def device_to_json(device: DsaDevice, save: bool = False) -> Json:
    obj: Json = {
        "dev": device.name,
        "read_buffer_limit": device.read_buffer_limit,
        "event_log_size": device.event_log_size,
    }
    if not save:
        obj.update(
            {
                "max_groups": len(device.groups),
                "max_work_queues": len(device.wqs),
                "max_engines": len(device.engines),
                "work_queue_size": device.total_wq_size,
                "numa_node": -1,
                "op_cap": bitmap256_text(caps.OPCAP),
                "gen_cap": hex(caps.GENCAP | caps.GENCAP_EVL_SUPPORT),
                "version": hex(caps.DSA_VERSION),
                "state": "enabled" if device.enabled else "disabled",
                "max_read_buffers": caps.MAX_READ_BUFFERS,
                "max_batch_size": caps.MAX_BATCH_SIZE,
                "max_transfer_size": caps.MAX_TRANSFER_SIZE,
                "configurable": int(device.configurable),
                "pasid_enabled": 1,
                "clients": sum(wq.clients for wq in device.wqs),
            }
        )
    obj["groups"] = [group_to_json(group, save) for group in device.groups]
    loose_engines = [engine_to_json(e) for e in device.engines if e.group is None]
    if loose_engines:
        obj[UNGROUPED_ENGINES] = loose_engines
    loose_wqs = [wq_to_json(wq, save) for wq in device.wqs if wq.group is None]
    if loose_wqs:
        obj[UNGROUPED_WQS] = loose_wqs
    return obj


class Accelerators:
    """The daemon's DSA devices, named as accel-config names them (``dsa0``, ``dsa0/wq0.1`` or
    ``wq0.1``, ``group0.0``, ``engine0.3``)."""

    def __init__(self, devices: Iterable[DsaDevice]) -> None:
        self.devices: dict[str, DsaDevice] = {}
        for device in devices:
            if device.name in self.devices:
                raise ValueError(f"two devices named {device.name}")
            self.devices[device.name] = device

    @classmethod
    def embedded(cls) -> Accelerators:
        """The embedded default: ``dsa0`` with an enabled dedicated and shared WQ."""
        return cls([embedded_default()])

    def device(self, name: str) -> DsaDevice:
        try:
            return self.devices[name]
        except KeyError:
            raise SiovError(errno.ENODEV, f"no accelerator device {name!r}") from None

    def _owner(self, kind: str, path: str) -> DsaDevice:
        """The device a component name belongs to: ``dsa0/wq0.1`` or ``wq0.1``."""
        if "/" in path:
            return self.device(path.split("/", 1)[0])
        if path.startswith(kind):
            dev_id = path[len(kind) :].split(".", 1)[0]
            if dev_id.isdigit():
                return self.device(f"dsa{int(dev_id)}")
        raise SiovError(errno.ENODEV, f"no {kind} {path!r}")

    def wq(self, path: str) -> WorkQueue:
        return self._owner("wq", path).wq(path)

    def group(self, path: str) -> Group:
        return self._owner("group", path).group(path)

    def engine(self, path: str) -> Engine:
        return self._owner("engine", path).engine(path)

    def to_json(self, save: bool = False) -> list[Json]:
        """``accel-config list -i`` (or ``save-config`` with ``save=True``)."""
        return [device_to_json(device, save) for device in self.devices.values()]

    def load_config(
        self, config: Sequence[Mapping[str, Any]] | Mapping[str, Any], enable: bool = False
    ) -> None:
        """``accel-config load-config [-e]``: apply a saved configuration; all or nothing.

        Each listed device must be disabled (``EBUSY``). Every object's first key must be
        ``"dev"`` (``EINVAL``); unknown attributes are ``EINVAL``; read-only ones that ``list``
        shows are ignored. With ``enable`` the devices and the grouped WQs of nonzero size are
        enabled afterwards.
        """
        entries = [config] if isinstance(config, Mapping) else list(config)
        plan: list[tuple[DsaDevice, Mapping[str, Any]]] = []
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise SiovError(errno.EINVAL, "load-config: each entry must be a device object")
            name = _dev_name(entry, "device")
            device = self.device(name)
            if device.enabled:
                raise SiovError(errno.EBUSY, f"{name} is enabled: disable it before load-config")
            plan.append((device, entry))
        saved = [(device, _save_device(device)) for device, _ in plan]
        try:
            for device, entry in plan:
                _load_device(device, entry)
            if enable:
                for device, _ in plan:
                    device.enable()
                    for wq in device.wqs:
                        if wq.group is not None and wq.size > 0 and not wq.enabled:
                            wq.enable()
        except SiovError:
            for device, snapshot in saved:
                for wq in device.wqs:
                    wq.enabled = False
                device.enabled = False
                _restore_device(device, snapshot)
            raise


def _dev_name(obj: Mapping[str, Any], what: str) -> str:
    keys = list(obj)
    if not keys or keys[0] != "dev":
        raise SiovError(errno.EINVAL, f'load-config: every {what} object must start with "dev"')
    name = obj["dev"]
    if not isinstance(name, str):
        raise SiovError(errno.EINVAL, f'load-config: "dev" of a {what} must be a string')
    return name


def _check_keys(where: str, obj: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise SiovError(errno.EINVAL, f"{where}: unknown attribute(s) {', '.join(unknown)}")


def _load_device(device: DsaDevice, entry: Mapping[str, Any]) -> None:
    _check_keys(
        device.name,
        entry,
        {"dev", "groups", UNGROUPED_WQS, UNGROUPED_ENGINES}
        | set(DEVICE_ATTRS)
        | set(DEVICE_ATTR_ALIASES)
        | _DEVICE_READONLY,
    )
    device.configure(
        {k: v for k, v in entry.items() if k in DEVICE_ATTRS or k in DEVICE_ATTR_ALIASES}
    )
    wq_entries: list[tuple[Mapping[str, Any], int]] = []
    engine_entries: list[tuple[Mapping[str, Any], int]] = []
    groups = entry.get("groups", [])
    if not isinstance(groups, list):
        raise SiovError(errno.EINVAL, f'{device.name}: "groups" must be a list')
    for group_entry in groups:
        group = device.group(_dev_name(group_entry, "group"))
        _check_keys(
            group.path,
            group_entry,
            {"dev", "grouped_workqueues", "grouped_engines"}
            | set(GROUP_ATTRS)
            | set(GROUP_ATTR_ALIASES)
            | _GROUP_READONLY,
        )
        group.configure(
            {k: v for k, v in group_entry.items() if k in GROUP_ATTRS or k in GROUP_ATTR_ALIASES}
        )
        wq_entries += [(wq, group.id) for wq in group_entry.get("grouped_workqueues", [])]
        engine_entries += [(e, group.id) for e in group_entry.get("grouped_engines", [])]
    wq_entries += [(wq, -1) for wq in entry.get(UNGROUPED_WQS, [])]
    engine_entries += [(e, -1) for e in entry.get(UNGROUPED_ENGINES, [])]

    for engine_entry, group_id in engine_entries:
        engine = device.engine(_dev_name(engine_entry, "engine"))
        _check_keys(engine.path, engine_entry, {"dev", "group_id"})
        _same_group(engine.path, engine_entry, group_id)
        engine.configure({"group_id": group_id})

    wqs = [(device.wq(_dev_name(wq_entry, "wq")), wq_entry, gid) for wq_entry, gid in wq_entries]
    for wq, _, _ in wqs:  # sizes first go to zero, so the order of WQs cannot break the total
        wq.configure({"size": 0})
    for wq, wq_entry, group_id in wqs:
        _check_keys(wq.path, wq_entry, {"dev"} | set(WQ_ATTRS) | _WQ_READONLY)
        _same_group(wq.path, wq_entry, group_id)
        # Values a WQ already has are left alone, as accel-config does: a saved unconfigured
        # WQ (no name, threshold 0) then loads back although those values cannot be written.
        current = wq.config()
        attrs = {
            k: v for k, v in wq_entry.items() if k in WQ_ATTRS and not _same(wq, current, k, v)
        }
        attrs["group_id"] = group_id
        if attrs.get("mode", wq.mode) == "dedicated" and attrs.get("threshold") == 0:
            del attrs["threshold"]  # what `list` shows for a dedicated WQ, not a setting
        wq.configure(attrs)


def _same(wq: WorkQueue, current: Mapping[str, object], name: str, value: object) -> bool:
    if name == "op_config":
        try:
            return as_bitmap256(wq.path, name, value) == wq.op_config
        except SiovError:
            return False
    return current[name] == value


def _same_group(where: str, obj: Mapping[str, Any], group_id: int) -> None:
    if "group_id" in obj and obj["group_id"] != group_id:
        raise SiovError(
            errno.EINVAL, f"{where}: group_id {obj['group_id']} but listed under group {group_id}"
        )


_Snapshot = tuple[
    tuple[int, int],
    list[dict[str, object]],
    list[Group | None],
    list[tuple[Group | None, dict[str, object]]],
]


def _save_device(device: DsaDevice) -> _Snapshot:
    return (
        (device.read_buffer_limit, device.event_log_size),
        [group.config() for group in device.groups],
        [engine.group for engine in device.engines],
        [wq._save() for wq in device.wqs],
    )


def _restore_device(device: DsaDevice, snapshot: _Snapshot) -> None:
    """Put a disabled device back as it was; bypasses the rules, which held for it before."""
    (limit, evl_size), groups, engine_groups, wqs = snapshot
    device.read_buffer_limit = limit
    device.event_log_size = evl_size
    for group, values in zip(device.groups, groups, strict=True):
        for name, value in values.items():
            setattr(group, name, bool(value) if name == "use_read_buffer_limit" else value)
        group.engines.clear()
    for engine, owner in zip(device.engines, engine_groups, strict=True):
        engine.group = owner
        if owner is not None:
            owner.engines.append(engine)
    for wq, saved in zip(device.wqs, wqs, strict=True):
        wq._restore(saved)
