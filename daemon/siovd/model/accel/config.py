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
from dataclasses import dataclass, field
from typing import Any, Final

from siovd.model.accel import caps
from siovd.model.accel.attrs import as_bitmap256, bitmap256_text
from siovd.model.accel.device import (
    DEVICE_ATTR_ALIASES,
    DEVICE_ATTRS,
    DEVICE_KINDS,
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


#: ``cdev_major`` siov reports for its devices (the kernel allocates one per idxd driver; any
#: fixed number serves, since siov's char devices are the host view's, not the kernel's)
CDEV_MAJOR: Final = 511
#: ``ims_size``: siov's mdevs interrupt through their own MSI-X table, not a device IMS table
IMS_SIZE: Final = 0


def _hex(value: int) -> str:
    """util/json.c display_hex: ``"%#" PRIx64``, so 0 is ``"0"``."""
    return hex(value) if value else "0"


def wq_to_json(wq: WorkQueue, save: bool = False) -> Json:
    """util/json.c util_wq_to_json of accel-config 3.5.3, key for key, then siov's extras
    (``prs_disable``, ``op_config``, ``occupancy``) outside ``save``."""
    obj: Json = {"dev": wq.dev_name, "mode": wq.mode, "size": wq.size}
    if wq.group_id >= 0:  # accel-config omits a negative group_id
        obj["group_id"] = wq.group_id
    obj.update(
        {
            "priority": wq.priority,
            "block_on_fault": int(wq.block_on_fault),
            "max_batch_size": wq.max_batch_size,
            "max_transfer_size": wq.max_transfer_size,
        }
    )
    if not save and wq.enabled and wq.type == "user":
        obj["cdev_minor"] = wq.id  # the char device exists only while a user WQ is enabled
    obj.update({"type": wq.type, "name": wq.name, "driver_name": wq.driver_name})
    obj.update({"threshold": wq.threshold, "ats_disable": int(wq.ats_disable)})
    if not save:
        obj["state"] = "enabled" if wq.enabled else "disabled"
        obj["clients"] = wq.clients
        # siov's extras (4.x has the first two; the last is siov's own)
        obj["prs_disable"] = int(wq.prs_disable)
        obj["op_config"] = bitmap256_text(wq.op_config)
        obj["occupancy"] = wq.occupancy
    return obj


def engine_to_json(engine: Engine) -> Json:
    obj: Json = {"dev": engine.dev_name}
    if engine.group_id >= 0:
        obj["group_id"] = engine.group_id
    return obj


def group_to_json(group: Group, save: bool = False) -> Json:
    """accfg/list.c group_to_json: the read-buffer attributes only for a DSA device."""
    values = group.config()
    obj: Json = {"dev": group.dev_name}
    if group.device.kind != "iax":
        for name in ("read_buffers_reserved", "use_read_buffer_limit", "read_buffers_allowed"):
            obj[name] = values[name]
    obj["traffic_class_a"] = values["traffic_class_a"]
    obj["traffic_class_b"] = values["traffic_class_b"]
    wqs = [wq for wq in group.wqs if wq.enabled or not save]
    if wqs:
        obj["grouped_workqueues"] = [wq_to_json(wq, save) for wq in wqs]
    if group.engines:
        obj["grouped_engines"] = [engine_to_json(engine) for engine in group.engines]
    return obj


def _op_cap_words(bitmap: int) -> list[str]:
    """The old kernel op_cap format 3.5.3 reads: four 64-bit words, least significant first."""
    return [_hex((bitmap >> (64 * i)) & ((1 << 64) - 1)) for i in range(4)]


def device_to_json(device: DsaDevice, save: bool = False) -> Json:
    """util/json.c util_device_to_json of accel-config 3.5.3, then the groups, WQs and engines
    as accfg/list.c adds them. ``save`` is ``save-config``: only what load-config writes back,
    and only enabled WQs, never ungrouped ones (list.c without ``-i``)."""
    dsa = device.kind != "iax"
    obj: Json = {"dev": device.name}
    if dsa:
        obj["read_buffer_limit"] = device.read_buffer_limit
    if not save:
        obj.update(
            {
                "max_groups": len(device.groups),
                "max_work_queues": len(device.wqs),
                "max_engines": len(device.engines),
                "work_queue_size": device.total_wq_size,
                "numa_node": -1,
                "op_cap": _op_cap_words(caps.OPCAP),
                "gen_cap": _hex(caps.GENCAP),
                "version": _hex(caps.DSA_VERSION),
                "state": "enabled" if device.enabled else "disabled",
            }
        )
        if dsa:
            obj["max_read_buffers"] = caps.MAX_READ_BUFFERS
        obj.update(
            {
                "max_batch_size": caps.MAX_BATCH_SIZE,
                "ims_size": IMS_SIZE,
                "max_transfer_size": caps.MAX_TRANSFER_SIZE,
                "configurable": int(device.configurable),
                "pasid_enabled": 1,
                "cdev_major": CDEV_MAJOR,
                "clients": sum(wq.clients for wq in device.wqs),
                "event_log_size": device.event_log_size,  # siov's extra (accel-config 4.x)
            }
        )
    obj["groups"] = [group_to_json(group, save) for group in device.groups]
    if not save:
        loose_wqs = [wq_to_json(wq, save) for wq in device.wqs if wq.group is None]
        if loose_wqs:
            obj[UNGROUPED_WQS] = loose_wqs
    loose_engines = [engine_to_json(e) for e in device.engines if e.group is None]
    if loose_engines:
        obj[UNGROUPED_ENGINES] = loose_engines
    return obj


def make_device(name: str) -> DsaDevice:
    """A device by its accel-config name: ``dsaN`` as siov's embedded default (enabled, two
    WQs), ``iaxN`` disabled and unconfigured, with eight engines and eight WQs."""
    for kind in DEVICE_KINDS:
        number = name[len(kind) :]
        if name.startswith(kind) and number.isdigit() and str(int(number)) == number:
            if kind == "dsa":
                return embedded_default(int(number))
            return DsaDevice(int(number), kind=kind, max_engines=8)
    raise ValueError(f"accelerator device {name!r}: expected dsaN or iaxN")


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
                for device in self.devices.values():
                    if device.id == int(dev_id):
                        return device
                return self.device(f"dsa{int(dev_id)}")
        raise SiovError(errno.ENODEV, f"no {kind} {path!r}")

    def wq(self, path: str) -> WorkQueue:
        return self._owner("wq", path).wq(path)

    def group(self, path: str) -> Group:
        return self._owner("group", path).group(path)

    def engine(self, path: str) -> Engine:
        return self._owner("engine", path).engine(path)

    def to_json(self, save: bool = False) -> list[Json]:
        """``accel-config list -i`` with siov's extras (or ``save-config`` with ``save=True``:
        the enabled devices only, as 3.5.3 saves them)."""
        return [
            device_to_json(device, save)
            for device in self.devices.values()
            if device.enabled or not save
        ]

    def load_config(
        self,
        config: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        enable: bool = False,
        force: bool = False,
    ) -> LoadReport:
        """``accel-config load-config [-e] [-f]``: apply a saved configuration; all or nothing.

        As accfg/config.c: an enabled device is skipped with a message ("dsa0 is active.
        Skipping...") unless ``force``, which disables it first (``EBUSY`` while mdevs use
        its WQs; re-enabled as it was if the load fails). Only the attributes an entry names
        change. Every object's first key must be ``"dev"`` (``EINVAL``); unknown attributes
        are ``EINVAL``; read-only ones that ``list`` shows are ignored, and so are those
        accel-config does not write: ``threshold`` of a dedicated WQ, a group read-buffer
        value of -1, ``use_read_buffer_limit`` while the device's ``read_buffer_limit`` is 0,
        read-buffer values of an IAA device. With ``enable`` the loaded devices and exactly
        the WQs the file lists are enabled, in the order accel-config enables them (its
        activation lists are LIFO).
        """
        entries = [config] if isinstance(config, Mapping) else list(config)
        report = LoadReport()
        plan: list[tuple[DsaDevice, Mapping[str, Any]]] = []
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise SiovError(errno.EINVAL, "load-config: each entry must be a device object")
            name = _dev_name(entry, "device")
            device = self.device(name)
            if any(device is planned for planned, _ in plan):
                raise SiovError(errno.EINVAL, f"load-config: {name} is listed twice")
            if device.enabled and not force:
                report.messages.append(f"{name} is active. Skipping...")
                continue
            plan.append((device, entry))
        for device, _ in plan:
            if device.enabled:
                busy = [wq.dev_name for wq in device.wqs if wq.clients]
                if busy:
                    raise SiovError(
                        errno.EBUSY,
                        f"{device.name} is active and {', '.join(busy)} in use by mdevs:"
                        " remove them before load-config -f",
                    )
        # what -f disables comes back if the load fails: their WQs have no mdevs (checked),
        # so nothing but the enabled flags changes
        forced = {
            device.name: [wq for wq in device.wqs if wq.enabled]
            for device, _ in plan
            if device.enabled
        }
        for device, _ in plan:
            if device.enabled:
                report.messages.append(f"{device.name} is active. Disabling...")
                device.disable()
        saved = [(device, _save_device(device)) for device, _ in plan]
        try:
            listed = [(device, _load_device(device, entry)) for device, entry in plan]
            if enable:
                for device, _ in reversed(listed):
                    report.enabled.append(f"Enabling device {device.name}")
                    device.enable()
                for wq in reversed([wq for _, wqs in listed for wq in wqs]):
                    report.enabled.append(f"Enabling wq {wq.dev_name}")
                    wq.enable()
        except SiovError:
            for device, snapshot in saved:
                for wq in device.wqs:
                    wq.enabled = False
                device.enabled = False
                _restore_device(device, snapshot)
                if device.name in forced:
                    device.enabled = True
                    for wq in forced[device.name]:
                        wq.enabled = True
            raise
        return report


@dataclass(slots=True)
class LoadReport:
    """What load-config tells the user: ``messages`` (accel-config's stderr lines) and
    ``enabled`` (its stdout lines with ``-e``)."""

    messages: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)

    def to_json(self) -> Json:
        return {"messages": list(self.messages), "enabled": list(self.enabled)}


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


_READ_BUFFER_GROUP_ATTRS: Final = frozenset(
    {
        "read_buffers_reserved",
        "read_buffers_allowed",
        "use_read_buffer_limit",
        "tokens_reserved",
        "tokens_allowed",
        "use_token_limit",
    }
)


def _group_attrs(group: Group, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The group attributes accel-config would write (accfg/config.c group_json_set_val)."""
    attrs = {k: v for k, v in entry.items() if k in GROUP_ATTRS or k in GROUP_ATTR_ALIASES}
    limit_set = group.device.read_buffer_limit != 0
    for key in list(attrs):
        skip = (
            (key in _READ_BUFFER_GROUP_ATTRS and group.device.kind == "iax")
            or attrs[key] == -1  # is_group_*_writable: -1 means "leave it"
            # is_group_read_buffer_limit_writable
            or (key in ("use_read_buffer_limit", "use_token_limit") and not limit_set)
        )
        if skip:
            del attrs[key]
    return attrs


def _load_device(device: DsaDevice, entry: Mapping[str, Any]) -> list[WorkQueue]:
    """Apply one device entry; returns the WQs it lists, in file order."""
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
        if not isinstance(group_entry, Mapping):
            raise SiovError(errno.EINVAL, f"{device.name}: each group must be an object")
        group = device.group(_dev_name(group_entry, "group"))
        _check_keys(
            group.path,
            group_entry,
            {"dev", "grouped_workqueues", "grouped_engines"}
            | set(GROUP_ATTRS)
            | set(GROUP_ATTR_ALIASES)
            | _GROUP_READONLY,
        )
        group.configure(_group_attrs(group, group_entry))
        wq_entries += [(wq, group.id) for wq in _objects(group_entry, "grouped_workqueues")]
        engine_entries += [(e, group.id) for e in _objects(group_entry, "grouped_engines")]
    wq_entries += [(wq, -1) for wq in _objects(entry, UNGROUPED_WQS)]
    engine_entries += [(e, -1) for e in _objects(entry, UNGROUPED_ENGINES)]

    for engine_entry, group_id in engine_entries:
        engine = device.engine(_dev_name(engine_entry, "engine"))
        _check_keys(engine.path, engine_entry, {"dev", "group_id"})
        _same_group(engine.path, engine_entry, group_id)
        engine.configure({"group_id": group_id})

    wqs = [(device.wq(_dev_name(wq_entry, "wq")), wq_entry, gid) for wq_entry, gid in wq_entries]
    for wq, wq_entry, _ in wqs:
        # Only the sizes the file sets go to zero first, so the order of WQs cannot break the
        # total; a WQ entry without "size" keeps its size (accel-config writes only what an
        # entry names).
        if "size" in wq_entry:
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
        if attrs.get("mode", wq.mode) == "dedicated":
            attrs.pop("threshold", None)  # is_wq_threshold_writable: not for a dedicated WQ
        wq.configure(attrs)
    return [wq for wq, _, _ in wqs]


def _objects(obj: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SiovError(errno.EINVAL, f'load-config: "{key}" must be a list of objects')
    return value


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
    (limit, evl), groups, engine_groups, wqs = snapshot
    device.read_buffer_limit, device.event_log_size = limit, evl
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
