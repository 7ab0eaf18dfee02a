"""The idxd sysfs tree, computed from an ``ACCEL_LIST`` snapshot (pure: no I/O, no FUSE).

Paths are relative to the view's root and name what the kernel shows on a host with the idxd
driver: ``bus/dsa/devices``, ``bus/dsa/drivers/{idxd,user,dmaengine}``, ``module/idxd`` and
``dev/dsa``. Formats follow ``drivers/dma/idxd/sysfs.c`` (``%d\\n``, ``%#x\\n`` for ``version``,
``%#llx\\n`` for ``gen_cap``, the ``engines``/``work_queues`` lists of a group, ...).

A *store* is what a write to an attribute asks of the daemon: :func:`store_for` turns a path
and the written bytes into a :class:`Store` (a command and its arguments) or raises
:class:`SysfsError` with the errno the kernel would answer before reaching the driver.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["dir", "file", "link"]

#: ``op_cap`` formats: the kernel printed four 64-bit words (``%#llx`` each, space separated)
#: until the 256-bit opcode bitmap (``%*pb``: eight comma-separated ``%08x`` words) replaced it.
#: accel-config 3.5.3 parses the first (``"%lx %lx %lx %lx"``), 4.x the second.
OpCapFormat = Literal["u64x4", "bitmap"]

# cdev major the view reports for the WQ char devices (dynamic on a real host; any free one).
CDEV_MAJOR = 239
# drivers/dma/idxd/registers.h: IMS entries per device on DSA 1.0 parts
IMS_SIZE = 2048


class SysfsError(Exception):
    """An errno for the writer or reader, as the kernel's attribute would return it."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


@dataclass(frozen=True)
class Node:
    kind: Kind
    #: file: text shown (None: reading fails with ``read_errno``); link: its target
    content: str | None = None
    writable: bool = False
    #: a dynamic entry appears and disappears with state: the kernel must not cache it
    dynamic: bool = False
    read_errno: int = 0
    children: tuple[str, ...] = ()


@dataclass(frozen=True)
class Store:
    """One write to an attribute, as a daemon command."""

    command: str  # "config_device" | "config_group" | "config_engine" | "config_wq"
    #              | "enable_device" | "disable_device" | "enable_wq" | "disable_wq" | "noop"
    target: str
    attrs: dict[str, Any] = field(default_factory=dict)


# ---- helpers ----------------------------------------------------------------------------------


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return f"{int(value)}\n"
    return f"{value}\n"


def _dev_index(name: str) -> str:
    """``dsa0`` -> ``0``."""
    return name[len(name.rstrip("0123456789")) :]


def op_cap_number(value: Any) -> int:
    """The daemon's op_cap as a 256-bit number: accel-config 3.x's four hex words (least
    significant first) or the kernel's ``%*pb`` text (eight 32-bit words, most significant
    first)."""
    if isinstance(value, list):
        return sum(int(str(w), 16) << (64 * i) for i, w in enumerate(value))
    number = 0
    for w in str(value).split(","):
        number = (number << 32) | int(w, 16)
    return number


def op_cap_text(value: Any, fmt: OpCapFormat) -> str:
    """The device's op_cap as the kernel prints it in the requested format."""
    number = op_cap_number(value)
    if fmt == "bitmap":
        return ",".join(f"{(number >> (32 * i)) & 0xFFFFFFFF:08x}" for i in range(7, -1, -1)) + "\n"
    # old sysfs.c: for (i = 0; i < 4; i++) "%#llx " over the four u64 words, low word first
    parts = [f"{(number >> (64 * i)) & ((1 << 64) - 1):#x}" for i in range(4)]
    return " ".join(parts) + " \n"


def _wqs(device: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for group in device.get("groups", []):
        out.extend(group.get("grouped_workqueues", []))
    out.extend(device.get("ungrouped workqueues", []))
    return sorted(out, key=lambda w: int(str(w["dev"]).split(".")[1]))


def _engines(device: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for group in device.get("groups", []):
        out.extend(group.get("grouped_engines", []))
    out.extend(device.get("ungrouped engines", []))
    return sorted(out, key=lambda e: int(str(e["dev"]).split(".")[1]))


def _wq_driver(wq: dict[str, Any]) -> str | None:
    """The driver an enabled WQ is bound to (drivers/dma/idxd: user -> "user", kernel ->
    "dmaengine" unless it names another)."""
    if wq.get("state") != "enabled":
        return None
    if wq.get("type") == "user":
        return "user"
    if wq.get("type") == "kernel":
        return str(wq.get("driver_name") or "dmaengine")
    return None


DRIVERS = ("idxd", "user", "dmaengine")

#: writable attributes of each object (sysfs.c's 0644 ones) and old names accel-config falls
#: back to (tokens were renamed read buffers in 5.17)
DEVICE_RW = {
    "read_buffer_limit": "read_buffer_limit",
    "token_limit": "read_buffer_limit",
    "event_log_size": "event_log_size",
}
GROUP_RW = {
    "read_buffers_reserved": "read_buffers_reserved",
    "read_buffers_allowed": "read_buffers_allowed",
    "use_read_buffer_limit": "use_read_buffer_limit",
    "tokens_reserved": "read_buffers_reserved",
    "tokens_allowed": "read_buffers_allowed",
    "use_token_limit": "use_read_buffer_limit",
    "traffic_class_a": "traffic_class_a",
    "traffic_class_b": "traffic_class_b",
}
WQ_RW = (
    "group_id",
    "mode",
    "size",
    "priority",
    "block_on_fault",
    "threshold",
    "type",
    "name",
    "driver_name",
    "max_batch_size",
    "max_transfer_size",
    "ats_disable",
    "prs_disable",
    "op_config",
)
WQ_STRINGS = ("mode", "type", "name", "driver_name", "op_config")


# ---- the tree ----------------------------------------------------------------------------------


class Tree:
    """Every path of the view for one snapshot of ``ACCEL_LIST``."""

    def __init__(
        self, devices: list[dict[str, Any]], *, op_cap_format: OpCapFormat = "bitmap"
    ) -> None:
        self.devices = {str(d["dev"]): d for d in devices if str(d["dev"]).startswith("dsa")}
        self.op_cap_format = op_cap_format
        self.nodes: dict[str, Node] = {}
        self._build()

    # -- building --

    def _dir(self, path: str, children: list[str], *, dynamic: bool = False) -> None:
        self.nodes[path] = Node("dir", children=tuple(children), dynamic=dynamic)

    def _file(self, path: str, content: str | None, writable: bool = False, **kw: Any) -> None:
        self.nodes[path] = Node("file", content, writable=writable, **kw)

    def _link(self, path: str, target: str, *, dynamic: bool = False) -> None:
        self.nodes[path] = Node("link", target, dynamic=dynamic)

    def _attrs(self, base: str, attrs: Mapping[str, tuple[str | None, bool]]) -> list[str]:
        for name, (content, writable) in attrs.items():
            self._file(f"{base}/{name}", content, writable)
        return list(attrs)

    def _build(self) -> None:
        self._dir("", ["bus", "module", "dev"])
        self._dir("bus", ["dsa"])
        self._dir("module", ["idxd"])
        self._dir("module/idxd", ["initstate", "refcnt", "parameters", "drivers"])
        self._file("module/idxd/initstate", "live\n")
        self._file("module/idxd/refcnt", "0\n")
        self._dir("module/idxd/parameters", [])
        self._dir("module/idxd/drivers", [])
        self._dir("bus/dsa", ["devices", "drivers", "drivers_autoprobe", "drivers_probe"])
        self._file("bus/dsa/drivers_autoprobe", "1\n", True)
        self._file("bus/dsa/drivers_probe", "", True)
        dev_entries: list[str] = []
        bound: dict[str, list[str]] = {d: [] for d in DRIVERS}
        cdevs: list[str] = []
        for name, device in sorted(self.devices.items()):
            dev_entries.append(name)
            self._device(name, device, bound, cdevs)
            for child in self._children(name):
                dev_entries.append(child)
                self._link(f"bus/dsa/devices/{child}", f"{name}/{child}")
        self._dir("bus/dsa/devices", dev_entries)
        self._dir("bus/dsa/drivers", list(DRIVERS))
        for drv in DRIVERS:
            base = f"bus/dsa/drivers/{drv}"
            entries = ["bind", "unbind", "uevent", *bound[drv]]
            self._dir(base, entries, dynamic=True)
            self._file(f"{base}/bind", "", True)
            self._file(f"{base}/unbind", "", True)
            self._file(f"{base}/uevent", "", True)
            for dev in bound[drv]:
                self._link(f"{base}/{dev}", f"../../devices/{dev}", dynamic=True)
        self._dir("dev", ["dsa"])
        self._dir("dev/dsa", cdevs, dynamic=True)
        for cdev in cdevs:
            self._file(f"dev/dsa/{cdev}", "", True, dynamic=True)

    def _children(self, name: str) -> list[str]:
        device = self.devices[name]
        idx = _dev_index(name)
        out = [f"group{idx}.{i}" for i in range(len(device.get("groups", [])))]
        out += [str(e["dev"]) for e in _engines(device)]
        out += [str(w["dev"]) for w in _wqs(device)]
        return out

    def _device(
        self, name: str, d: dict[str, Any], bound: dict[str, list[str]], cdevs: list[str]
    ) -> None:
        base = f"bus/dsa/devices/{name}"
        enabled = d.get("state") == "enabled"
        attrs: dict[str, tuple[str | None, bool]] = {
            "cmd_status": ("0\n", True),
            "max_groups": (_num(d["max_groups"]), False),
            "max_work_queues": (_num(d["max_work_queues"]), False),
            "max_engines": (_num(d["max_engines"]), False),
            "max_work_queues_size": (_num(d["work_queue_size"]), False),
            "numa_node": (_num(d.get("numa_node", -1)), False),
            "ims_size": (_num(d.get("ims_size", IMS_SIZE)), False),
            "max_batch_size": (_num(d["max_batch_size"]), False),
            "max_transfer_size": (_num(d["max_transfer_size"]), False),
            "gen_cap": (f"{d['gen_cap']}\n", False),
            "configurable": (_num(d["configurable"]), False),
            "pasid_enabled": (_num(d["pasid_enabled"]), False),
            "max_read_buffers": (_num(d["max_read_buffers"]), False),
            "max_tokens": (_num(d["max_read_buffers"]), False),
            "read_buffer_limit": (_num(d["read_buffer_limit"]), True),
            "token_limit": (_num(d["read_buffer_limit"]), True),
            "cdev_major": (_num(d.get("cdev_major", CDEV_MAJOR)), False),
            "version": (f"{d['version']}\n", False),
            "op_cap": (op_cap_text(d["op_cap"], self.op_cap_format), False),
            "errors": (" ".join(["0x" + "0" * 16] * 4) + " \n", False),
            "state": (f"{d['state']}\n", False),
            "clients": (_num(d.get("clients", 0)), False),
            "uevent": ("", True),
        }
        if "event_log_size" in d:
            # sysfs.c shows it only on a device with an event log (DSA 2.0 GENCAP.EVL)
            attrs["event_log_size"] = (_num(d["event_log_size"]), True)
        children = self._attrs(base, attrs)
        if enabled:
            self._link(f"{base}/driver", "../../drivers/idxd", dynamic=True)
            children.append("driver")
            bound["idxd"].append(name)
        idx = _dev_index(name)
        for i, group in enumerate(d.get("groups", [])):
            gname = f"group{idx}.{i}"
            engines = " ".join(f"{e['dev']}" for e in group.get("grouped_engines", []))
            wqs = " ".join(f"{w['dev']}" for w in group.get("grouped_workqueues", []))
            g = {
                "engines": (engines + "\n", False),
                "work_queues": (wqs + "\n", False),
                "read_buffers_reserved": (_num(group["read_buffers_reserved"]), True),
                "read_buffers_allowed": (_num(group["read_buffers_allowed"]), True),
                "use_read_buffer_limit": (_num(group["use_read_buffer_limit"]), True),
                "tokens_reserved": (_num(group["read_buffers_reserved"]), True),
                "tokens_allowed": (_num(group["read_buffers_allowed"]), True),
                "use_token_limit": (_num(group["use_read_buffer_limit"]), True),
                "traffic_class_a": (_num(group["traffic_class_a"]), True),
                "traffic_class_b": (_num(group["traffic_class_b"]), True),
            }
            self._dir(f"{base}/{gname}", self._attrs(f"{base}/{gname}", g))
            children.append(gname)
        for engine in _engines(d):
            ename = str(engine["dev"])
            e = {"group_id": (_num(engine.get("group_id", -1)), True)}
            self._dir(f"{base}/{ename}", self._attrs(f"{base}/{ename}", e))
            children.append(ename)
        for wq in _wqs(d):
            wname = str(wq["dev"])
            wbase = f"{base}/{wname}"
            driver = _wq_driver(wq)
            has_cdev = driver == "user"
            # accel-config's JSON leaves some keys out (an ungrouped WQ has no group_id):
            # sysfs always has the attribute, with the driver's reset value
            defaults: dict[str, Any] = {
                "group_id": -1,
                "mode": "dedicated",
                "size": 0,
                "priority": 0,
                "block_on_fault": 0,
                "threshold": 0,
                "type": "none",
                "name": "",
                "driver_name": "",
                "max_batch_size": d["max_batch_size"],
                "max_transfer_size": d["max_transfer_size"],
                "ats_disable": 0,
                "prs_disable": 0,
                "op_config": op_cap_text(d["op_cap"], "bitmap").strip(),
            }
            values = {**defaults, **wq}
            w: dict[str, tuple[str | None, bool]] = {
                key: (_num(values[key]) if key not in WQ_STRINGS else f"{values[key]}\n", True)
                for key in WQ_RW
            }
            w["state"] = (f"{wq['state']}\n", False)
            w["clients"] = (_num(wq.get("clients", 0)), False)
            w["occupancy"] = (_num(wq.get("occupancy", 0)), False)
            w["enqcmds_retries"] = ("0\n", True)
            # sysfs.c wq_cdev_minor_show: ENXIO without a char device
            minor = wq.get("cdev_minor", wname.split(".")[1])
            w["cdev_minor"] = (f"{minor}\n" if has_cdev else None, False)
            kids = self._attrs(wbase, w)
            if not has_cdev:
                self.nodes[f"{wbase}/cdev_minor"] = Node("file", None, read_errno=errno.ENXIO)
            if driver is not None:
                self._link(f"{wbase}/driver", f"../../../drivers/{driver}", dynamic=True)
                kids.append("driver")
                bound.setdefault(driver, []).append(wname)
            if has_cdev:
                cdevs.append(wname)
            self._dir(wbase, kids, dynamic=True)
            children.append(wname)
        self._dir(base, children, dynamic=True)

    # -- queries --

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)


# ---- stores ------------------------------------------------------------------------------------


def _value(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    # sysfs stores ignore one trailing newline (sysfs_streq, kstrto*, strreplace in name)
    return text[:-1] if text.endswith("\n") else text


def _int_or_str(text: str) -> int | str:
    try:
        return int(text.strip(), 0)
    except ValueError:
        return text


def store_for(tree: Tree, path: str, raw: bytes) -> Store:
    """What a write of ``raw`` to ``path`` asks of the daemon."""
    node = tree.get(path)
    if node is None:
        raise SysfsError(errno.ENOENT)
    if node.kind != "file" or not node.writable:
        raise SysfsError(errno.EACCES)
    parts = path.split("/")
    value = _value(raw)
    if parts[:3] == ["bus", "dsa", "drivers"] and len(parts) == 5:
        driver, attr = parts[3], parts[4]
        name = value.strip()
        if attr == "uevent":
            return Store("noop", "")
        return _bind_store(tree, driver, attr, name)
    if parts[:2] == ["bus", "dsa"] and len(parts) == 3:
        return Store("noop", "")
    if parts[:3] != ["bus", "dsa", "devices"] or len(parts) < 5:
        raise SysfsError(errno.EACCES)
    dev, attr = parts[3], parts[-1]
    if len(parts) == 5:
        if attr in ("cmd_status", "uevent"):
            return Store("noop", dev)  # cmd_status_store clears the status
        return Store("config_device", dev, {DEVICE_RW[attr]: _int_or_str(value)})
    obj = parts[4]
    target = f"{dev}/{obj}"
    if obj.startswith("group"):
        return Store("config_group", target, {GROUP_RW[attr]: _int_or_str(value)})
    if obj.startswith("engine"):
        return Store("config_engine", target, {attr: _int_or_str(value)})
    if attr == "enqcmds_retries":
        return Store("noop", target)
    if attr in WQ_STRINGS:
        return Store("config_wq", target, {attr: value})
    return Store("config_wq", target, {attr: _int_or_str(value)})


def _bind_store(tree: Tree, driver: str, attr: str, name: str) -> Store:
    """drivers/base/bus.c bind_store/unbind_store: ENODEV when no device of that name
    matches the driver; EBUSY (from the probe path) when it is already bound."""
    device = wq = None
    if name.startswith("dsa") and "." not in name:
        device = tree.devices.get(name)
    elif name.startswith("wq"):
        idx, _, _ = name[2:].partition(".")
        device = tree.devices.get(f"dsa{idx}")
        if device is not None:
            wq = next((w for w in _wqs(device) if w["dev"] == name), None)
    if device is None:
        raise SysfsError(errno.ENODEV)
    if wq is None:
        if driver != "idxd" or not name.startswith("dsa"):
            raise SysfsError(errno.ENODEV)
        if attr == "bind":
            return Store("enable_device", name)
        if device.get("state") != "enabled":
            raise SysfsError(errno.ENODEV)
        return Store("disable_device", name)
    if attr == "unbind":
        if _wq_driver(wq) != driver:
            raise SysfsError(errno.ENODEV)
        return Store("disable_wq", f"{device['dev']}/{name}")
    if driver == "idxd":
        raise SysfsError(errno.ENODEV)
    if wq.get("state") == "enabled":
        raise SysfsError(errno.EBUSY)
    # drivers/dma/idxd/bus.c matches any WQ to a WQ driver; the driver's probe refuses a WQ
    # of another type (ENODEV), and the daemon refuses the rest (type none, no name, ...)
    wtype = wq.get("type")
    if wtype != "none" and wtype != {"user": "user", "dmaengine": "kernel"}.get(driver):
        raise SysfsError(errno.ENODEV)
    return Store("enable_wq", f"{device['dev']}/{name}")
