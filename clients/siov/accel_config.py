"""accel-config's ``list`` as accel-config 3.5.3 (Debian bookworm's) prints it.

siovd answers ACCEL_LIST with every device, group, engine and WQ (the ``list -i`` view) and
some extras of its own. This module turns that into what ``accel-config list`` with the same
options prints, byte for byte: the keys and their order of 3.5.3's ``util/json.c``, the filters
and views of ``accfg/list.c`` (``-d -g -q -e``, ``-D -G -Q -E``, ``-i``), json-c's pretty
printer. ``extras=True`` keeps siov's extra keys (``prs_disable``, ``op_config``,
``occupancy``: the first two are accel-config 4.x's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from siov_protocol import jsonc

Json = dict[str, Any]

UNGROUPED_WQS = "ungrouped workqueues"  # accfg/list.c spells it with a space
UNGROUPED_ENGINES = "ungrouped_engines"

#: 3.5.3's keys (util/json.c util_device_to_json, util_wq_to_json, util_engine_to_json;
#: accfg/list.c group_to_json), plus the arrays list.c adds
DEVICE_KEYS = frozenset(
    {
        "dev",
        "read_buffer_limit",
        "max_groups",
        "max_work_queues",
        "max_engines",
        "work_queue_size",
        "numa_node",
        "errors",
        "op_cap",
        "gen_cap",
        "version",
        "state",
        "max_read_buffers",
        "max_batch_size",
        "ims_size",
        "max_transfer_size",
        "configurable",
        "pasid_enabled",
        "cdev_major",
        "clients",
        "groups",
        UNGROUPED_WQS,
        UNGROUPED_ENGINES,
    }
)
GROUP_KEYS = frozenset(
    {
        "dev",
        "read_buffers_reserved",
        "use_read_buffer_limit",
        "read_buffers_allowed",
        "traffic_class_a",
        "traffic_class_b",
        "grouped_workqueues",
        "grouped_engines",
    }
)
WQ_KEYS = frozenset(
    {
        "dev",
        "mode",
        "size",
        "group_id",
        "priority",
        "block_on_fault",
        "max_batch_size",
        "max_transfer_size",
        "cdev_minor",
        "type",
        "name",
        "driver_name",
        "threshold",
        "ats_disable",
        "state",
        "clients",
    }
)
ENGINE_KEYS = frozenset({"dev", "group_id"})


class ListError(Exception):
    """What accel-config prints on stderr before it fails (``No matching device found``)."""


def _pick(obj: Json, keys: frozenset[str], extras: bool) -> Json:
    return {k: v for k, v in obj.items() if extras or k in keys}


@dataclass
class _Device:
    """accfg/list.c's per-device container: the device object and the arrays it grew."""

    name: str
    obj: Json
    groups: list[Json] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    wq_groups: dict[int, list[Json]] = field(default_factory=dict)
    wq_ungrouped: list[Json] | None = None
    engine_groups: dict[int, list[Json]] = field(default_factory=dict)
    engine_ungrouped: list[Json] | None = None


def _split(name: str, what: str, devices: dict[str, Json]) -> tuple[str, str]:
    """util/filter.c parse_*_name: ``<device>/<component>``, both of which must exist."""
    parent, sep, child = name.partition("/")
    if not sep or not parent or not child:
        raise ListError("")
    if parent not in devices:
        raise ListError(f"{parent} device not found")
    return parent, child


def _components(device: Json) -> tuple[list[Json], list[Json], list[Json]]:
    groups = list(device.get("groups", []))
    wqs = [wq for g in groups for wq in g.get("grouped_workqueues", [])]
    wqs += device.get(UNGROUPED_WQS, [])
    engines = [e for g in groups for e in g.get("grouped_engines", [])]
    engines += device.get(UNGROUPED_ENGINES, [])
    key = _component_number
    return groups, sorted(wqs, key=key), sorted(engines, key=key)


def _component_number(obj: Json) -> int:
    return int(str(obj["dev"]).rsplit(".", 1)[-1])


def list_output(
    listing: list[Json],
    *,
    device: str | None = None,
    group: str | None = None,
    wq: str | None = None,
    engine: str | None = None,
    devices_view: bool = False,
    groups_view: bool = False,
    wqs_view: bool = False,
    engines_view: bool = False,
    idle: bool = False,
    extras: bool = False,
) -> str:
    """What ``accel-config list`` prints (stdout) for these options; :class:`ListError`
    carries its stderr message when it fails."""
    by_name = {str(d["dev"]): d for d in listing}
    want_dev: str | None = None
    want_child: tuple[str, str] | None = None  # (kind, name) of the one component filtered
    if device is not None:
        if device not in by_name:
            raise ListError(f"{device} device not found")
        want_dev = device
    elif group is not None or wq is not None or engine is not None:
        kind, name = next(
            (k, n) for k, n in (("group", group), ("wq", wq), ("engine", engine)) if n
        )
        want_dev, child = _split(name, kind, by_name)
        groups, wqs, engines = _components(by_name[want_dev])
        pool = {"group": groups, "wq": wqs, "engine": engines}[kind]
        if not any(obj["dev"] == child for obj in pool):
            label = {"group": "group", "wq": "workqueue", "engine": "engine"}[kind]
            raise ListError(f"{name} {label} not found")
        want_child = (kind, child)
    # list.c: with no view flag, the filter given chooses the view
    if not (devices_view or groups_view or wqs_view or engines_view):
        devices_view, groups_view = device is not None, group is not None
        wqs_view, engines_view = wq is not None, engine is not None

    found = want_dev is None
    shown: list[_Device] = []
    for dev in listing:
        name = str(dev["dev"])
        if want_dev is not None and name != want_dev:
            continue
        enabled = dev.get("state") == "enabled"
        if not enabled and not idle:  # util_device_to_json: idle devices need -i
            continue
        if device is not None:
            found = True
        if want_child is not None:
            found = True
        obj = _pick({k: v for k, v in dev.items() if not isinstance(v, list) or k == "op_cap"},
                    DEVICE_KEYS, extras)  # fmt: skip
        for key in ("groups", UNGROUPED_WQS, UNGROUPED_ENGINES):
            obj.pop(key, None)
        box = _Device(name, obj)
        groups, wqs, engines = _components(dev)
        for g in groups:
            if want_child is not None and want_child[0] == "group" and g["dev"] != want_child[1]:
                continue
            gobj = _pick(
                {k: v for k, v in g.items() if k not in ("grouped_workqueues", "grouped_engines")},
                GROUP_KEYS,
                extras,
            )
            box.groups.append(gobj)
            box.group_ids.append(int(str(g["dev"]).rsplit(".", 1)[-1]))
        if box.groups:
            obj["groups"] = box.groups
        for w in wqs:
            if want_child is not None and want_child[0] == "wq" and w["dev"] != want_child[1]:
                continue
            if not idle and w.get("state") != "enabled":  # filter_wq: idle WQs need -i
                continue
            wobj = _pick(w, WQ_KEYS, extras)
            gid = w.get("group_id")
            if isinstance(gid, int) and gid in box.group_ids:
                arr = box.wq_groups.get(gid)
                if arr is None:
                    arr = box.wq_groups[gid] = []
                    box.groups[box.group_ids.index(gid)]["grouped_workqueues"] = arr
                arr.append(wobj)
            elif not isinstance(gid, int) and idle:
                if box.wq_ungrouped is None:
                    box.wq_ungrouped = obj[UNGROUPED_WQS] = []
                box.wq_ungrouped.append(wobj)
        for e in engines:
            if want_child is not None and want_child[0] == "engine" and e["dev"] != want_child[1]:
                continue
            eobj = _pick(e, ENGINE_KEYS, extras)
            gid = e.get("group_id")
            if isinstance(gid, int) and gid in box.group_ids:
                arr = box.engine_groups.get(gid)
                if arr is None:
                    arr = box.engine_groups[gid] = []
                    box.groups[box.group_ids.index(gid)]["grouped_engines"] = arr
                arr.append(eobj)
            elif not isinstance(gid, int):
                if box.engine_ungrouped is None:
                    box.engine_ungrouped = obj[UNGROUPED_ENGINES] = []
                box.engine_ungrouped.append(eobj)
        shown.append(box)
    if not found:
        raise ListError("No matching device found")
    return _display(shown, devices_view, groups_view, wqs_view, engines_view, device, wq, engine)


def _array(value: list[Json]) -> str:
    return jsonc.dumps(value) + "\n"


def _display(
    shown: list[_Device],
    devices_view: bool,
    groups_view: bool,
    wqs_view: bool,
    engines_view: bool,
    device: str | None,
    wq: str | None,
    engine: str | None,
) -> str:
    """accfg/list.c list_display and display_device/group/wq/engine."""
    if not (devices_view or groups_view or wqs_view or engines_view):
        return _array([box.obj for box in shown])
    out: list[str] = []
    if devices_view:
        out.append("devices:\n")
        if device is None:
            out.append(_array([box.obj for box in shown]))
        elif shown:
            out.append(jsonc.dumps(shown[0].obj) + "\n")
        else:
            raise ListError("No matching device found")
        return "".join(out)
    if groups_view:
        out.append("groups:\n")
        for box in shown:
            out.append(f"device {box.name}:\n")
            out.append(_array(box.groups))
        return "".join(out)
    kind = "workqueues" if wqs_view else "engines"
    out.append(f"{kind}:\n")
    for box in shown:
        grouped = box.wq_groups if wqs_view else box.engine_groups
        ungrouped = box.wq_ungrouped if wqs_view else box.engine_ungrouped
        one_component = (wq if wqs_view else engine) is not None  # no headings then
        out.append(f"device {box.name}:\n")
        heading = not one_component
        for gid in box.group_ids:
            if gid in grouped:
                if heading:
                    out.append(f"grouped {kind}:\n")
                    heading = False
                if not one_component:
                    out.append(f"group id {gid}:\n")
                out.append(_array(grouped[gid]))
        if ungrouped is not None:
            if not one_component:
                out.append(f"ungrouped {kind}:\n")
            out.append(_array(ungrouped))
    return "".join(out)
