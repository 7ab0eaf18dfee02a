"""``siovctl``: talk to siovd from a shell. Human tables by default, JSON with ``--json``.

Every subcommand is a small function registered in :data:`COMMANDS`; it receives the blocking
client and its parsed arguments and returns something printable (a dict or a list of rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
import time
import uuid as uuid_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from siov_protocol import Command, jsonc
from siov_protocol.replies import DeviceDescription
from siov_protocol.schema import encode, plain

from . import mdevctl
from .accel_config import ListError, list_output
from .blocking import BlockingClient
from .client import default_socket_path
from .errors import SiovError

Handler = Callable[[BlockingClient, argparse.Namespace], Any]
COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(
    name: str, help: str, setup: Callable[[argparse.ArgumentParser], None] = lambda p: None
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = (fn, setup, help)
        return fn

    return register


# ---- output --------------------------------------------------------------------------------


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, sub in enumerate(value):
            _flatten(f"{prefix}[{i}]", sub, out)
    else:
        out.append((prefix, _scalar(value)))


def _scalar(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return f"{value} ({value:#x})"
    return str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [[_scalar(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def render(result: Any) -> str:
    if isinstance(result, list):
        return render_table(result)
    if isinstance(result, dict):
        pairs: list[tuple[str, str]] = []
        _flatten("", result, pairs)
        width = max((len(k) for k, _ in pairs), default=0)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)
    return str(result)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


# ---- core subcommands ----------------------------------------------------------------------


@command("info", "daemon version, uptime, config summary and object counts")
def cmd_info(client: BlockingClient, args: argparse.Namespace) -> Any:
    return client.info()


def _ping_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--count", type=int, default=1, help="round trips to time (default 1)")


@command("ping", "round-trip a PING and report its latency", _ping_args)
def cmd_ping(client: BlockingClient, args: argparse.Namespace) -> Any:
    times = []
    for _ in range(max(1, args.count)):
        t0 = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {
        "count": len(times),
        "min_us": round(times[0], 1),
        "median_us": round(times[len(times) // 2], 1),
    }


@command("stats", "daemon counters (iotlb, faults, descriptors, events, ...)")
def cmd_stats(client: BlockingClient, args: argparse.Namespace) -> Any:
    return client.stats()


# ---- the mdev bus and the IOMMU --------------------------------------------------------------


def _all_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="every client's objects (the default when the daemon lets you see them; kept "
        "for compatibility)",
    )
    p.add_argument(
        "--mine",
        action="store_true",
        help="only this command's own connection's objects (siovctl's connection owns none "
        "unless the command creates some)",
    )


def _everything(
    client: BlockingClient, args: argparse.Namespace, fetch: Callable[..., list[Any]]
) -> list[Any]:
    """Every client's objects unless --mine; a user without the admin role sees its own."""
    if getattr(args, "mine", False):
        return fetch(everything=False)
    try:
        return fetch(everything=True)
    except SiovError as exc:
        if exc.errno != errno.EPERM:
            raise
        return fetch(everything=False)


def _num(text: str) -> int:
    return int(text, 0)


# mdevctl's verbs and options (src/cli.rs), output (src/main.rs, src/mdev.rs) and messages. siov
# runs no callout scripts, so -f/--force is accepted and changes nothing.


def _types_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--parent", help="Show supported types for the specified parent")
    p.add_argument("--dumpjson", action="store_true", help="mdev types list in JSON format")


@command("types", "mdev types offered by the parents on the bus (mdevctl types)", _types_args)
def cmd_types(client: BlockingClient, args: argparse.Namespace) -> Any:
    types = [t for t in client.types() if args.parent is None or t.parent == args.parent]
    if args.json:
        return types
    maps = [encode(t) for t in types]
    if args.dumpjson:
        return Printed(stdout=mdevctl.types_dumpjson(maps))
    return Printed(stdout=mdevctl.types_text(maps))


def _list_args(p: argparse.ArgumentParser) -> None:
    _all_arg(p)
    p.add_argument("-d", "--defined", action="store_true", help="Show defined devices")
    p.add_argument("--dumpjson", action="store_true", help="device list in JSON format")
    p.add_argument("-v", "--verbose", action="store_true", help="show attributes")
    p.add_argument("-u", "--uuid", help="devices matching the specified UUID")
    p.add_argument("-p", "--parent", help="devices of the specified parent")


def _uuid_text(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid_module.UUID(value))
    except ValueError:
        raise SiovError(errno.EINVAL, f"invalid UUID {value!r}") from None


def _active(client: BlockingClient, everything: bool = True) -> list[DeviceDescription]:
    """Running mdevs: every client's when allowed (mdevctl lists the whole system)."""
    try:
        devices = client.devices(everything=everything)
    except SiovError as exc:
        if exc.errno != errno.EPERM:
            raise
        devices = client.devices()
    return [d for d in devices if d.parent is not None]


def _defined_mdevs(client: BlockingClient, uuid: str | None, parent: str | None) -> list[Any]:
    try:
        out = client.defined(parent=parent, uuid=uuid)
    except SiovError as exc:
        if exc.errno in (errno.ENOENT, errno.EOPNOTSUPP):
            return []
        raise
    return [
        mdevctl.Mdev(d.uuid, d.parent, d.mdev_type, d.start, list(d.attrs), d.running)
        for d in out.definitions
    ]


@command(
    "list", "running mdevs, or persistent definitions with --defined (mdevctl list)", _list_args
)
def cmd_list(client: BlockingClient, args: argparse.Namespace) -> Any:
    uuid = _uuid_text(args.uuid)
    if args.defined:
        if args.json:
            # siov's --json: one definition's config, or the dumpjson list; both feed
            # `siovctl define --jsonfile`.
            out = client.defined(parent=args.parent, uuid=uuid)
            return out.config if uuid and out.config is not None else out.dumpjson
        found = _defined_mdevs(client, uuid, args.parent)
    else:
        running = [
            d
            for d in _active(client, True)
            if (uuid is None or d.uuid == uuid) and (args.parent is None or d.parent == args.parent)
        ]
        if args.json:
            return running  # siov's own view: owner, group, domain, PASID
        defined = {(m.parent, m.uuid) for m in _defined_mdevs(client, None, None)}
        found = [
            mdevctl.Mdev(d.uuid, str(d.parent), str(d.type_id), other=(d.parent, d.uuid) in defined)
            for d in running
        ]
    if args.dumpjson:
        return Printed(stdout=mdevctl.dumpjson(found, uuid))
    return Printed(stdout=mdevctl.text(found, defined=args.defined, verbose=args.verbose))


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="accepted; siov has no callouts")


def _read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError as exc:
        raise SiovError(exc.errno or errno.EIO, f"Unable to read file {path!r}: {exc}") from None
    except ValueError as exc:
        raise SiovError(errno.EINVAL, f"{path}: invalid json: {exc}") from None


def _define_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", help="UUID (default: generated and printed)")
    p.add_argument("-p", "--parent", help="parent device, e.g. dsa0")
    p.add_argument("-t", "--type", dest="mdev_type", help="mdev type, e.g. dsa-1dwq")
    start = p.add_mutually_exclusive_group()
    start.add_argument("-a", "--auto", action="store_true", help="start with the daemon")
    start.add_argument("-m", "--manual", action="store_true", help="start on request (default)")
    p.add_argument(
        "--addattr", action="append", default=[], metavar="NAME=VALUE", help="an attribute"
    )
    p.add_argument(
        "--jsonfile",
        help="one definition's config (needs -p), or the list shape of `list --defined"
        " --dumpjson` (all or none; -p/-u pick entries)",
    )
    _force(p)


def _pairs(items: list[str]) -> list[dict[str, str]]:
    attrs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SiovError(errno.EINVAL, f"--addattr {item!r}: expected NAME=VALUE")
        attrs.append({name: value})
    return attrs


@command("define", "persist an mdev definition (admin; mdevctl define)", _define_args)
def cmd_define(client: BlockingClient, args: argparse.Namespace) -> Any:
    uuid = _uuid_text(args.uuid)
    if args.jsonfile:
        if args.mdev_type or args.auto:
            raise SiovError(
                errno.EINVAL, f"Device type cannot be specified separately from {args.jsonfile}"
            )
        data = _read_json(args.jsonfile)
        if isinstance(data, list):  # the dumpjson list: [{parent: [{uuid: config}]}]
            defined = client.define_many(data, parent=args.parent, uuid=uuid)
            if args.json:
                return [{"uuid": d.uuid, "parent": d.parent} for d in defined]
            return Printed()
        if not args.parent:
            raise SiovError(
                errno.EINVAL, f"Parent device required to define device via {args.jsonfile}"
            )
        reply = client.define(args.parent, uuid=uuid, config=data)
    else:
        parent, mdev_type = args.parent, args.mdev_type
        if uuid is not None and (parent is None or mdev_type is None):
            # mdevctl define -u of a running device takes its parent and type
            for d in _active(client):
                if d.uuid == uuid and (parent is None or d.parent == parent):
                    parent, mdev_type = parent or d.parent, mdev_type or d.type_id
        if parent is None:
            raise SiovError(errno.EINVAL, "No parent specified")
        if mdev_type is None:
            raise SiovError(errno.EINVAL, "No type specified")
        start = "auto" if args.auto else "manual"
        attrs = _pairs(args.addattr)
        reply = client.define(parent, mdev_type, uuid=uuid, start=start, attrs=attrs)
    if args.json:
        return reply
    return Printed(stdout="" if uuid else reply.uuid + "\n")  # mdevctl prints a new UUID


def _undefine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", required=True)
    p.add_argument("-p", "--parent")
    _force(p)


@command("undefine", "remove persistent definitions (admin; mdevctl undefine)", _undefine_args)
def cmd_undefine(client: BlockingClient, args: argparse.Namespace) -> Any:
    gone = client.undefine(_uuid_text(args.uuid) or "", args.parent)
    return gone if args.json else Printed()


def _modify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", required=True, help="UUID of the mdev to modify")
    p.add_argument("-p", "--parent", help="parent of the mdev to modify")
    p.add_argument("-t", "--type", dest="mdev_type", help="modify the mdev type")
    p.add_argument("--addattr", metavar="NAME", help="add an attribute (with --value)")
    p.add_argument("--delattr", action="store_true", help="delete an attribute")
    p.add_argument("-i", "--index", type=int, help="index of the attribute to add or delete")
    p.add_argument("--value", help="value for the attribute named by --addattr")
    p.add_argument("-a", "--auto", action="store_true", help="start automatically")
    p.add_argument("-m", "--manual", action="store_true", help="start manually")
    p.add_argument(
        "-l", "--live", action="store_true", help="modify the running device (with --jsonfile)"
    )
    p.add_argument("-d", "--defined", action="store_true", help="modify the stored definition")
    p.add_argument("--jsonfile", help="replace start mode and attributes with the file's")
    _force(p)


def _modify_checks(args: argparse.Namespace) -> None:
    """clap's rules in mdevctl src/cli.rs Modify."""

    def conflict(a: str, b: str) -> SiovError:
        return SiovError(errno.EINVAL, f"the argument '{a}' cannot be used with '{b}'")

    if args.value is not None and args.addattr is None:
        raise SiovError(errno.EINVAL, "the argument '--value' requires '--addattr'")
    if not (args.auto or args.manual or args.addattr or args.delattr or args.jsonfile):
        raise SiovError(
            errno.EINVAL,
            "modify needs one of --auto, --manual, --addattr, --delattr, --jsonfile",
        )
    if args.addattr is not None and args.value is None:
        raise SiovError(errno.EINVAL, "No attribute value provided")
    if args.value is not None and args.delattr:
        raise conflict("--value", "--delattr")
    for flag in ("auto", "manual", "live", "jsonfile"):
        if getattr(args, flag):
            for other in ("index", "value"):
                if getattr(args, other) is not None:
                    raise conflict(f"--{flag}", f"--{other}")
    if (args.live or args.jsonfile) and args.mdev_type is not None:
        raise conflict("--live" if args.live else "--jsonfile", "--type")
    if args.live and not args.jsonfile:
        raise SiovError(errno.EINVAL, "'live' option must be used with 'jsonfile' option")
    if args.auto and args.manual:
        raise SiovError(errno.EINVAL, "'auto' and 'manual' are mutually exclusive")


def _attribute_hint(uuid: str, attrs: list[dict[str, str]]) -> str:
    if not attrs:
        return f"Device {uuid} has no attributes"
    shown = mdevctl.text([mdevctl.Mdev(uuid, "", "", attrs=attrs)], defined=True, verbose=True)
    return shown.split("\n", 1)[1]  # mdev.rs fmt_attrs: the attribute lines only


@command("modify", "change a definition, or a running mdev with --live (admin)", _modify_args)
def cmd_modify(client: BlockingClient, args: argparse.Namespace) -> Any:
    """mdevctl modify (src/main.rs modify_command)."""
    _modify_checks(args)
    uuid = _uuid_text(args.uuid) or ""
    if args.live:
        running = [
            d
            for d in _active(client)
            if d.uuid == uuid and (args.parent is None or d.parent == args.parent)
        ]
        if not running:
            raise SiovError(errno.ENOENT, f"mdev {uuid} is not running")
        active = running[0]
        config = _read_json(args.jsonfile)
        if not isinstance(config, dict) or config.get("mdev_type") != active.type_id:
            raise SiovError(errno.EINVAL, "'type' cannot be changed on active mdev")
        if args.defined:
            (stored,) = _defined_mdevs(client, uuid, active.parent) or [None]
            if stored is None:
                raise SiovError(errno.ENOENT, f"mdev {uuid} is not defined on {active.parent}")
            if stored.mdev_type != active.type_id:
                raise SiovError(errno.EINVAL, "'type' of active and defined mdev does not match")
        client.set_attrs(uuid, list(config.get("attrs") or []))
        if args.defined:
            client.define(active.parent, uuid=uuid, config=config, replace=True)
        return Printed()
    if args.jsonfile:
        if args.parent is None:
            raise SiovError(errno.EINVAL, "Parent device required to modify device via json file")
        config = _read_json(args.jsonfile)
        if not isinstance(config, dict):
            raise SiovError(errno.EINVAL, f"{args.jsonfile}: expected one device's config")
        parent = args.parent
        mdev_type, start = config.get("mdev_type"), config.get("start")
        attrs = list(config.get("attrs") or [])
    else:
        found = _defined_mdevs(client, uuid, args.parent)
        if len(found) > 1:
            raise SiovError(
                errno.EINVAL,
                f"Multiple definitions found for device {uuid}. Please specify a parent.",
            )
        if not found:
            where = f" on {args.parent}" if args.parent else ""
            raise SiovError(errno.ENOENT, f"mdev {uuid} is not defined{where}")
        stored = found[0]
        parent, mdev_type, attrs = stored.parent, stored.mdev_type, list(stored.attrs)
        if args.mdev_type is not None:
            mdev_type = args.mdev_type
        start = "auto" if args.auto else "manual" if args.manual else stored.start
    if args.addattr is not None:
        index = len(attrs) if args.index is None else args.index
        if not 0 <= index <= len(attrs):
            raise SiovError(
                errno.EINVAL,
                f"Attribute index {index} is invalid\n{_attribute_hint(uuid, attrs)}".rstrip(),
            )
        attrs.insert(index, {args.addattr: args.value})
    elif args.delattr:
        if args.index is None:
            if attrs:
                attrs.pop()  # mdev.rs delete_attribute: the last one
        elif not 0 <= args.index < len(attrs):
            raise SiovError(
                errno.EINVAL,
                f"Attribute index {args.index} is invalid\n{_attribute_hint(uuid, attrs)}".rstrip(),
            )
        else:
            del attrs[args.index]
    reply = client.define(
        parent, uuid=uuid, config={"mdev_type": mdev_type, "start": start, "attrs": attrs},
        replace=True,
    )  # fmt: skip
    return reply if args.json else Printed()


def _start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", help="UUID of the device to start")
    p.add_argument("-p", "--parent", help="parent of the device to start")
    p.add_argument("-t", "--type", dest="mdev_type", help="type of a device not defined")
    p.add_argument("--jsonfile", help="details of the device to be started, in JSON format")
    _force(p)


@command("start", "create a defined or fully specified mdev (admin; mdevctl start)", _start_args)
def cmd_start(client: BlockingClient, args: argparse.Namespace) -> Any:
    """mdevctl start (src/main.rs start_command_helper)."""
    uuid = _uuid_text(args.uuid)
    if args.jsonfile:
        if args.mdev_type is not None:
            raise SiovError(
                errno.EINVAL, "Device type cannot be specified separately from json file"
            )
        if args.parent is None:
            raise SiovError(errno.EINVAL, "Parent device required to start device via json file")
        config = _read_json(args.jsonfile)
        if not isinstance(config, dict):
            raise SiovError(errno.EINVAL, f"{args.jsonfile}: expected one device's config")
        reply = client.start(uuid, parent=args.parent, config=config)
    else:
        found = _defined_mdevs(client, uuid, args.parent) if uuid is not None else []
        if len(found) > 1:
            raise SiovError(
                errno.EINVAL,
                f"Multiple definitions found for device {uuid}. Please specify a parent.",
            )
        if found:
            d = found[0]
            if args.mdev_type is not None and args.mdev_type != d.mdev_type:
                raise SiovError(
                    errno.EEXIST,
                    f"Device {d.uuid} already exists on parent {d.parent} with type {d.mdev_type}",
                )
            reply = client.start(d.uuid, parent=d.parent)
        else:
            if args.mdev_type is not None and args.parent is None:
                raise SiovError(errno.EINVAL, "can't provide type without parent")
            if args.mdev_type is None or args.parent is None:
                raise SiovError(errno.EINVAL, "Device is insufficiently specified")
            reply = client.start(uuid, parent=args.parent, mdev_type=args.mdev_type)
    if args.json:
        return reply
    return Printed(stdout="" if uuid else reply.uuid + "\n")


def _stop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", required=True, help="UUID of the device to stop")
    _force(p)


@command("stop", "remove a started mdev (admin; mdevctl stop)", _stop_args)
def cmd_stop(client: BlockingClient, args: argparse.Namespace) -> Any:
    client.stop(_uuid_text(args.uuid) or "")
    return {"stopped": args.uuid} if args.json else Printed()


def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="private key file to write (the public key goes to PATH.pub)")
    p.add_argument("-C", "--comment", default="", help="comment for the public key line")


@command("keygen", "write an Ed25519 key pair for key authentication", _keygen_args)
def cmd_keygen(client: BlockingClient | None, args: argparse.Namespace) -> Any:
    from .keys import fingerprint, generate_keypair, public_key_line

    try:
        key = generate_keypair(args.path, args.comment)
    except FileExistsError as exc:
        raise SiovError(17, f"{exc.filename} exists; not overwriting it") from None
    return {
        "private_key": args.path,
        "public_key": args.path + ".pub",
        "fingerprint": fingerprint(key),
        "authorized_keys_line": public_key_line(key, args.comment),
    }


OFFLINE = {"keygen"}  # commands that need no daemon


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pos_parent", metavar="PARENT", nargs="?", help="parent device (or -p)")
    p.add_argument("pos_type", metavar="TYPE", nargs="?", help="mdev type (or -t)")
    p.add_argument("-p", "--parent", help="parent device, e.g. dsa0 or siov_test (as define)")
    p.add_argument("-t", "--type", dest="mdev_type", help="mdev type, e.g. dsa-1dwq")
    p.add_argument("-u", "--uuid", help="UUID to give the mdev (default: generated)")


@command("create", "create an mdev (it lives as long as this command's connection)", _create_args)
def cmd_create(client: BlockingClient, args: argparse.Namespace) -> Any:
    parent = args.parent or args.pos_parent
    mdev_type = args.mdev_type or args.pos_type
    if not parent or not mdev_type:
        raise SiovError(errno.EINVAL, "create needs a parent and a type: -p PARENT -t TYPE")
    return client.create_mdev(parent, mdev_type, args.uuid).info


def _uuid_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("uuid")


@command("remove", "remove an mdev you own", _uuid_arg)
def cmd_remove(client: BlockingClient, args: argparse.Namespace) -> Any:
    client.remove_mdev(args.uuid)
    return {"removed": args.uuid}


def _vfio_user_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("socket_path", metavar="SOCKET", help="Unix socket QEMU connects to")
    p.add_argument("-p", "--parent", default="dsa0", help="DSA parent (default dsa0)")
    p.add_argument("-u", "--uuid", help="UUID to give the mdev (default: generated)")


@command(
    "vfio-user",
    "create a dsa-1dwq mdev and serve it as a vfio-user PCI device on SOCKET until "
    "interrupted (QEMU >= 10.1: -device vfio-user-pci,socket=SOCKET)",
    _vfio_user_args,
)
def cmd_vfio_user(client: BlockingClient, args: argparse.Namespace) -> Any:
    mdev = client.create_mdev(args.parent, "dsa-1dwq", args.uuid)
    path = os.path.abspath(args.socket_path)
    served = client.vfio_user_expose(mdev, path)
    print(f"siovctl: serving mdev {mdev.uuid} at {path}; Ctrl-C to stop", flush=True)
    try:
        while True:
            event = client.next_event()
            if event.command == Command.EVENT_DEVICE_REMOVED:
                break
    except KeyboardInterrupt:
        pass
    return served


@command("groups", "IOMMU groups: devices, current and default domain, PASIDs", _all_arg)
def cmd_groups(client: BlockingClient, args: argparse.Namespace) -> Any:
    return [
        {
            "group": g.group_id,
            "devices": g.devices,
            "domain": g.domain_id,
            "default_domain": g.default_domain_id,
            "pasids": [f"{p.pasid}->{p.domain_id}" for p in g.pasids],
        }
        for g in _everything(client, args, client.groups)
    ]


@command("domains", "IOMMU domains: type, options, attachments, mapped bytes", _all_arg)
def cmd_domains(client: BlockingClient, args: argparse.Namespace) -> Any:
    columns = (
        "domain_id",
        "type",
        "bus",
        "levels",
        "user_managed",
        "lazy",
        "groups",
        "mapped_bytes",
    )
    domains = _everything(client, args, client.domains)
    if args.json:
        return domains  # every field: areas, pasids, pt_root_phys, default_of_group, ...
    rows = []
    for d in domains:
        row = {k: getattr(d, k) for k in columns}
        row["areas"] = d.areas
        row["pasids"] = [f"{dev[:8]}:{pasid}" for dev, pasid in d.pasids]
        row["default_of_group"] = d.default_of_group
        rows.append(row)
    return rows


def _iotlb_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--domain",
        type=_num,
        help="list the entries cached for this domain (any client's, "
        "as admin); without it, the IOMMU's counters",
    )
    p.add_argument("--pasid", type=_num, help="only the entries tagged with this PASID")


def _page_size(size: int) -> str:
    """4K, 2M, 1G (identity domains have no leaves: "-")."""
    if not size:
        return "-"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


@command("iotlb", "IOTLB counters, or a domain's cached entries (--domain, --pasid)", _iotlb_args)
def cmd_iotlb(client: BlockingClient, args: argparse.Namespace) -> Any:
    if args.domain is None:
        if args.pasid is not None:
            raise SystemExit("siovctl iotlb: --pasid needs --domain")
        iommu = client.stats().iommu or {}
        lookups = iommu.get("iotlb_hits", 0) + iommu.get("iotlb_misses", 0)
        out = {
            k: v
            for k, v in iommu.items()
            if k.startswith(("iotlb", "lazy", "faults", "translate_failures"))
        }
        out["iotlb_hit_rate"] = round(iommu.get("iotlb_hits", 0) / lookups, 4) if lookups else None
        return out
    entries = client.iotlb_entries(args.domain, pasid=args.pasid)
    if args.json:
        return [dataclasses.asdict(e) for e in entries]
    return [
        {
            "pasid": e.pasid,
            "iova": hex(e.iova),
            "page": _page_size(e.page_size),
            "phys": hex(e.phys),
            "rw": "rw" if e.writable else "r",
            "dirty": int(e.dirty),
            "hits": e.hits,
        }
        for e in entries
    ]


def _translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device UUID")
    p.add_argument("iova", type=_num, help="I/O virtual address (0x... accepted)")
    p.add_argument("length", type=_num, nargs="?", default=4096)
    p.add_argument(
        "--pasid",
        type=_num,
        default=0,
        help="PASID (default 0: a request without PASID, which for an accelerator mdev "
        "means its default PASID's domain, the one it was created with or attached to)",
    )
    p.add_argument("--write", action="store_true", help="translate for a write")


@command("translate", "translate an IOVA range of a device through the IOMMU", _translate_args)
def cmd_translate(client: BlockingClient, args: argparse.Namespace) -> Any:
    out = client.translate(args.device, args.iova, args.length, write=args.write, pasid=args.pasid)
    if args.json:
        return out
    rows: list[dict[str, Any]] = [
        {
            "iova": hex(r.iova),
            "phys": hex(r.phys),
            "length": r.length,
            "prot": r.prot,
            "page": _page_size(r.page_size),  # the leaf size behind the run
        }
        for r in out.runs
    ]
    if out.fault is not None:
        fault = out.fault
        name = fault.reason_name
        text = f"FAULT reason {fault.reason:#x}" + (f" ({name})" if name else "")
        rows.append({"iova": hex(fault.iova), "phys": text})
    return rows


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device UUID")


@command(
    "resv-regions", "a device's reserved IOVA regions (MSI window, direct, reserved)", _device_arg
)
def cmd_resv_regions(client: BlockingClient, args: argparse.Namespace) -> Any:
    regions = client.resv_regions(args.device)
    if args.json:
        return regions
    return [{"start": hex(r["start"]), "last": hex(r["last"]), "type": r["type"]} for r in regions]


def _domain_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", type=_num, help="domain id")


@command(
    "iova-ranges",
    "the IOVA ranges a domain can map (outside reserved, inside allowed)",
    _domain_arg,
)
def cmd_iova_ranges(client: BlockingClient, args: argparse.Namespace) -> Any:
    ranges = client.iova_ranges(args.domain)
    if args.json:
        return [{"start": s, "last": e} for s, e in ranges]
    return [{"start": hex(s), "last": hex(e)} for s, e in ranges]


@command("hw-info", "the IOMMU's VT-d cap/ecap and capabilities as a device sees them", _device_arg)
def cmd_hw_info(client: BlockingClient, args: argparse.Namespace) -> Any:
    info = client.hw_info(args.device)
    out = {k: v for k, v in info.items() if k != "data"}
    if not args.json:
        out["cap_reg"] = f"{info['cap_reg']:#018x}"
        out["ecap_reg"] = f"{info['ecap_reg']:#018x}"
    return out


# ---- the accelerator (accel-config's commands and object names) ----------------------------
#
# The verbs, options, messages and output of accel-config: 3.5.3 (Debian bookworm) for `list`,
# `save-config` and `load-config` output, plus the options 4.x added (config-device -e,
# config-group -d/-p, config-wq -r/-o, config-user-default). Messages go where accel-config
# sends them (accfg/enable.c, accfg/config.c: progress and refusals on stderr, "Enabling ..." on
# stdout); success is otherwise quiet.

#: accel-config's default configuration file (ACCFG_CONF_FILE)
ACCFG_CONF_FILE = "/etc/accel-config/accel-config.conf"


@dataclass
class Printed:
    """A command's output as it is to appear, verbatim: accel-config's own text."""

    stdout: str = ""
    stderr: list[str] = field(default_factory=list)
    code: int = 0


_WQ_OPTIONS: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    # (short, long, attribute, type): accel-config 4.x config-wq's options, in the order
    # accel-config writes them (config_attr.c: mode, type, name, driver_name, size, ...)
    ("-g", "--group-id", "group_id", int),
    ("-m", "--mode", "mode", str),
    ("-y", "--type", "type", str),
    ("-n", "--name", "name", str),
    ("-d", "--driver-name", "driver_name", str),
    ("-s", "--wq-size", "size", int),
    ("-p", "--priority", "priority", int),
    ("-r", "--prs-disable", "prs_disable", int),
    ("-b", "--block-on-fault", "block_on_fault", int),
    ("-t", "--threshold", "threshold", int),
    ("-c", "--max-batch-size", "max_batch_size", int),
    ("-x", "--max-transfer-size", "max_transfer_size", int),
    ("-a", "--ats-disable", "ats_disable", int),
    ("-o", "--op-config", "op_config", str),
)
_GROUP_OPTIONS: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    ("-r", "--read-buffers-reserved", "read_buffers_reserved", int),
    ("-t", "--read-buffers-allowed", "read_buffers_allowed", int),
    ("-l", "--use-read-buffer-limit", "use_read_buffer_limit", int),
    ("-a", "--traffic-class-a", "traffic_class_a", int),
    ("-b", "--traffic-class-b", "traffic_class_b", int),
    ("-d", "--desc-progress-limit", "desc_progress_limit", int),
    ("-p", "--batch-progress-limit", "batch_progress_limit", int),
)
_DEVICE_OPTIONS: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    ("-l", "--read-buffer-limit", "read_buffer_limit", int),
    ("-e", "--event-log-size", "event_log_size", int),
)


def _options(
    p: argparse.ArgumentParser, table: Sequence[tuple[str, str, str, Callable[[str], Any]]]
) -> None:
    for short, flag, attr, kind in table:
        p.add_argument(short, flag, dest=attr, type=kind)


def _accel_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="accel_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="devices, groups, engines and WQs as accel-config shows them")
    ls.add_argument("-d", "--device", help="filter by device")
    ls.add_argument("-g", "--group", help="filter by group (dsa0/group0.0)")
    ls.add_argument("-q", "--workqueue", help="filter by workqueue (dsa0/wq0.0)")
    ls.add_argument("-e", "--engine", help="filter by engine (dsa0/engine0.0)")
    ls.add_argument("-G", "--groups", action="store_true", help="include group info")
    ls.add_argument("-D", "--devices", action="store_true", help="include device info")
    ls.add_argument("-E", "--engines", action="store_true", help="include engine info")
    ls.add_argument("-Q", "--workqueues", action="store_true", help="include workqueue info")
    ls.add_argument("-i", "--idle", action="store_true", help="include idle components")
    ls.add_argument(
        "--siov",
        action="store_true",
        help="add siov's extra keys: on each enabled WQ the mdevs using it with their PASIDs "
        "(mdevs) and the dedicated-WQ drops (dropped); prs_disable, op_config, ... (without "
        "it the output is accel-config's, key for key)",
    )
    device = sub.add_parser("config-device", help="set device attributes (admin)")
    device.add_argument("names", nargs="+", metavar="DEVICE", help="e.g. dsa0, or all")
    _options(device, _DEVICE_OPTIONS)
    group = sub.add_parser("config-group", help="set group attributes (admin)")
    group.add_argument("names", nargs="+", metavar="GROUP", help="e.g. dsa0/group0.0, or all")
    _options(group, _GROUP_OPTIONS)
    engine = sub.add_parser("config-engine", help="move engines to a group (admin)")
    engine.add_argument("names", nargs="+", metavar="ENGINE", help="e.g. dsa0/engine0.1, or all")
    engine.add_argument("-g", "--group-id", dest="group_id", type=int)
    wq = sub.add_parser("config-wq", help="set WQ attributes (admin)")
    wq.add_argument("names", nargs="+", metavar="WQ", help="e.g. dsa0/wq0.1, or all")
    _options(wq, _WQ_OPTIONS)
    for action in ("enable-device", "disable-device", "enable-wq", "disable-wq"):
        what = "DEVICE" if action.endswith("device") else "WQ"
        verb = action.split("-")[0]
        q = sub.add_parser(action, help=f"{verb} devices or WQs (admin)")
        q.add_argument("names", nargs="+", metavar=what, help="names, or all")
        q.add_argument("-v", "--verbose", action="store_true", help="turn on debug")
        if verb == "disable":
            q.add_argument("-f", "--force", action="store_true", help="force action")
    save = sub.add_parser("save-config", help="write the configuration as load-config takes it")
    save.add_argument(
        "-s",
        "--saved-file",
        metavar="FILE",
        default=ACCFG_CONF_FILE,
        help=f"where (default {ACCFG_CONF_FILE}; - for stdout)",
    )
    load = sub.add_parser("load-config", help="apply a saved configuration (admin)")
    load.add_argument("-c", "--config-file", dest="config", metavar="FILE", default=ACCFG_CONF_FILE)
    load.add_argument("-v", "--verbose", action="store_true", help="the listing after, on stderr")
    load.add_argument("-e", "--enable", action="store_true", help="enable the file's devices/WQs")
    load.add_argument(
        "-f", "--forced", action="store_true", help="disable enabled devices before configuring"
    )
    default = sub.add_parser(
        "config-user-default", help="a shared user WQ on every WQ of each disabled device"
    )
    default.add_argument("-c", "--config-file", dest="config", metavar="FILE")
    default.add_argument("-d", "--disable", action="store_true", help="disable them again")
    default.add_argument("-n", "--name", default="user_default_wq", help="WQ name (with -d)")
    default.add_argument("-v", "--verbose", action="store_true")


def _attrs(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _wq_names(listing: list[dict[str, Any]]) -> list[str]:
    names = []
    for dev in listing:
        wqs = [w for g in dev.get("groups", []) for w in g.get("grouped_workqueues", [])]
        wqs += dev.get("ungrouped workqueues", [])
        names += sorted(f"{dev['dev']}/{w['dev']}" for w in wqs)
    return names


def _component_names(listing: list[dict[str, Any]], kind: str) -> list[str]:
    if kind == "device":
        return [str(d["dev"]) for d in listing]
    if kind == "wq":
        return _wq_names(listing)
    names = []
    for dev in listing:
        if kind == "group":
            names += [f"{dev['dev']}/{g['dev']}" for g in dev.get("groups", [])]
        else:
            engines = [e for g in dev.get("groups", []) for e in g.get("grouped_engines", [])]
            engines += dev.get("ungrouped_engines", [])
            names += sorted(f"{dev['dev']}/{e['dev']}" for e in engines)
    return names


def _names(client: BlockingClient, args: argparse.Namespace, kind: str) -> list[str]:
    """The names given, or every one of that kind for ``all`` (accel-config 4.x)."""
    names: list[str] = args.names
    if "all" in names:
        return _component_names(client.accel_list(), kind)
    return names


def _configure(
    client: BlockingClient, args: argparse.Namespace, kind: str, attrs: dict[str, Any]
) -> Printed:
    """config-device/-group/-engine/-wq: each name in turn; the first failure stops
    (accfg/config_attr.c returns on the first attribute that fails)."""
    call = {
        "device": client.accel_config_device,
        "group": client.accel_config_group,
        "engine": client.accel_config_engine,
        "wq": client.accel_config_wq,
    }[kind]
    out = Printed()
    for name in _names(client, args, kind):
        if kind != "device" and "/" not in name:
            out.stderr.append(f"{name} is not a valid {kind} name")
            continue
        try:
            call(name, **attrs)
        except SiovError as exc:
            if exc.errno == errno.ENODEV:
                out.stderr.append(f"{name} is not a valid {kind} name")
                continue
            out.stderr.append(f"{name}: {exc}")
            out.code = 1
            return out
    return out


def _enable_disable(client: BlockingClient, args: argparse.Namespace, action: str) -> Printed:
    """accfg/enable.c device_action / wq_action: each name, then "enabled N device(s) out of M"
    on stderr; success when any succeeded."""
    verb, kind = action.split("-")
    listing = client.accel_list()
    names = _component_names(listing, kind) if "all" in args.names else list(args.names)
    states: dict[str, str] = {}
    for dev in listing:
        states[str(dev["dev"])] = str(dev["state"])
        for g in dev.get("groups", []):
            for w in g.get("grouped_workqueues", []):
                states[f"{dev['dev']}/{w['dev']}"] = str(w["state"])
        for w in dev.get("ungrouped workqueues", []):
            states[f"{dev['dev']}/{w['dev']}"] = str(w["state"])
    out = Printed()
    success = 0
    for name in names:
        if name not in states:
            if args.verbose:
                out.stderr.append(f"{name} {'device' if kind == 'device' else 'wq'} not found")
            continue
        wanted = "enabled" if verb == "enable" else "disabled"
        if states[name] == wanted:
            if kind == "device":
                out.stderr.append(f"{name} is in {wanted} state already, skipping...")
            elif verb == "enable":
                out.stderr.append(f"{name} is in enabled or locked mode, skipping...")
            else:
                out.stderr.append(f"{name} is in disabled mode already, skipping...")
            out.stderr.append(f"failed in {name}")
            continue
        try:
            if kind == "device":
                (client.accel_enable_device if verb == "enable" else client.accel_disable_device)(
                    name
                )
            else:
                (client.accel_enable_wq if verb == "enable" else client.accel_disable_wq)(name)
        except SiovError as exc:
            out.stderr.append(f"{name}: {exc}")
            out.stderr.append(f"failed in {name}")
            continue
        success += 1
    what = "device(s)" if kind == "device" else "wq(s)"
    out.stderr.append(f"{verb}d {success} {what} out of {len(names)}")
    out.code = 0 if success else 1
    return out


def _read_accfg_file(path: str) -> list[Any]:
    try:
        with open(path, "rb") as fh:
            config = jsonc.loads(fh.read())
    except OSError as exc:
        raise SiovError(exc.errno or errno.EIO, f"{path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise SiovError(errno.EINVAL, f"{path}: not accel-config JSON: {exc}") from None
    return config if isinstance(config, list) else [config]


def _user_default(client: BlockingClient, args: argparse.Namespace) -> Printed:
    """accel-config 4.x config-user-default (accfg/config.c cmd_config_default): every WQ of
    each disabled device becomes a shared user WQ "user_default_wq" (priority 10, group 0,
    block_on_fault 1, prs_disable 1, size = work_queue_size / max_work_queues, threshold =
    size), the engines join group 0, the device and its WQs are enabled. ``-d`` disables the
    WQs of that name, and a device none of whose other WQs is enabled."""
    out = Printed()
    listing = client.accel_list()
    if args.disable:
        lines = [f"disable WQs named as {args.name}"]
        for dev in listing:
            wqs = [w for g in dev.get("groups", []) for w in g.get("grouped_workqueues", [])]
            enabled = [w for w in wqs if w["state"] == "enabled"]
            others = False
            for w in enabled:
                if w["name"] == args.name:
                    if args.verbose:
                        lines.append(f"disable {w['dev']}")
                    _quietly(out, client.accel_disable_wq, f"{dev['dev']}/{w['dev']}")
                else:
                    others = True
            if dev["state"] == "enabled" and not others:
                _quietly(out, client.accel_disable_device, str(dev["dev"]))
        out.stdout = "".join(line + "\n" for line in lines)
        return out
    lines = []
    for dev in listing:
        if dev["state"] == "enabled":
            continue  # "Don't enable WQs/engines on partially enabled devices"
        name = str(dev["dev"])
        size = int(dev["work_queue_size"]) // int(dev["max_work_queues"])
        wqs = _wq_names([dev])
        for wq in wqs:
            if args.verbose:
                lines.append(f"config {wq.split('/')[1]}")
            steps: list[dict[str, Any]] = [
                {"priority": 10},
                {"group_id": 0},
                {"block_on_fault": 1},
                {"mode": "shared"},
                {"type": "user"},
                {"name": "user_default_wq"},
                {"driver_name": "user"},
                {"size": size},
                {"threshold": size},
                {"prs_disable": 1},
                {"ats_disable": 0},
            ]
            for step in steps:  # each write on its own; accel-config ignores their errors
                _quietly(out, client.accel_config_wq, wq, quiet=not args.verbose, **step)
        for engine in _component_names([dev], "engine"):
            _quietly(out, client.accel_config_engine, engine, group_id=0)
        if args.verbose:
            lines.append(f"enable {name}")
        if not _quietly(out, client.accel_enable_device, name, failure=f"Error enabling {name}"):
            continue
        for wq in wqs:
            if args.verbose:
                lines.append(f"enable {wq.split('/')[1]}")
            _quietly(out, client.accel_enable_wq, wq, failure=f"Error enabling {wq}")
    out.stdout = "".join(line + "\n" for line in lines)
    return out


def _quietly(
    out: Printed,
    call: Callable[..., Any],
    *args: Any,
    failure: str | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> bool:
    try:
        call(*args, **kwargs)
    except SiovError as exc:
        if failure is not None:
            out.stderr.append(failure)
        if not quiet:
            out.stderr.append(f"{args[0] if args else ''}: {exc}")
        return False
    return True


@command("accel", "the accelerator, as accel-config shows and configures it", _accel_args)
def cmd_accel(client: BlockingClient, args: argparse.Namespace) -> Any:
    action = args.accel_command
    if action == "list":
        listing = client.accel_list()
        if args.json:
            return listing  # siov's full view: every component, with its extras
        try:
            text = list_output(
                listing,
                device=args.device,
                group=args.group,
                wq=args.workqueue,
                engine=args.engine,
                devices_view=args.devices,
                groups_view=args.groups,
                wqs_view=args.workqueues,
                engines_view=args.engines,
                idle=args.idle,
                extras=args.siov,
            )
        except ListError as exc:
            return Printed(stderr=[str(exc)] if str(exc) else [], code=1)
        return Printed(stdout=text)
    if action == "config-device":
        return _configure(
            client, args, "device", _attrs(args, [a for _, _, a, _ in _DEVICE_OPTIONS])
        )
    if action == "config-group":
        return _configure(client, args, "group", _attrs(args, [a for _, _, a, _ in _GROUP_OPTIONS]))
    if action == "config-engine":
        return _configure(client, args, "engine", _attrs(args, ["group_id"]))
    if action == "config-wq":
        return _configure(client, args, "wq", _attrs(args, [a for _, _, a, _ in _WQ_OPTIONS]))
    if action in ("enable-device", "disable-device", "enable-wq", "disable-wq"):
        return _enable_disable(client, args, action)
    if action == "config-user-default":
        if args.config:
            raise SiovError(
                errno.EOPNOTSUPP,
                "config-user-default -c: siovctl does not take user-default files yet;"
                " use load-config -c FILE -e",
            )
        return _user_default(client, args)
    if action == "save-config":
        config = client.accel_save_config()
        text = jsonc.dumps(config) + "\n"  # util_display_json_array
        if args.json:
            return config
        if args.saved_file == "-":
            return Printed(stdout=text)
        try:
            with open(args.saved_file, "w") as fh:
                fh.write(text)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return Printed(stderr=[f"Failed to open {args.saved_file} for save: {reason}"], code=1)
        return Printed()
    assert action == "load-config"
    config = _read_accfg_file(args.config)
    report = client.accel_load_config_report(config, enable=args.enable, force=args.forced)
    if args.json:
        return report
    out = Printed(stderr=list(report.messages))
    out.stdout = "".join(line + "\n" for line in report.enabled)
    if args.verbose:
        out.stderr.append(jsonc.dumps(report.devices))
    return out


# ---- main ----------------------------------------------------------------------------------


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--socket, --json and --key: before the subcommand or after it. Below the subcommand
    they default to SUPPRESS, so an option given before it is not overwritten."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--socket",
        metavar="PATH",
        default=default(None),
        help=f"daemon socket (default $SIOV_SOCKET, else {default_socket_path()})",
    )
    p.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON, not a table"
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        default=default(os.environ.get("SIOV_KEY")),
        help="private key for key authentication (default $SIOV_KEY)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siovctl",
        description="Control and inspect siovd.",
        epilog="Environment: SIOV_SOCKET names the daemon socket, SIOV_KEY the private key. "
        "--socket, --json and --key may come before or after the subcommand. Listings "
        "(list, groups, domains) show every client's objects when the daemon lets you "
        "(admin role); --mine shows only this command's own.",
    )
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, setup, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(sp, top=False)
        setup(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fn = COMMANDS[args.command][0]
    try:
        if args.command in OFFLINE:
            result = fn(None, args)  # type: ignore[arg-type]
        else:
            with BlockingClient(args.socket, name="siovctl", key_path=args.key) as client:
                result = fn(client, args)
    except SiovError as exc:
        print(f"siovctl: {args.command}: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, Printed):
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        for line in result.stderr:
            print(line, file=sys.stderr)
        return result.code
    result = plain(result)
    if args.json:
        json.dump(
            result,
            sys.stdout,
            default=_json_default,
            indent=None if isinstance(result, list) else 2,
        )
        sys.stdout.write("\n")
    elif result is not None:
        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
