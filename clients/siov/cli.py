"""``siovctl``: talk to siovd from a shell. Human tables by default, JSON with ``--json``.

Every subcommand is a small function registered in :data:`COMMANDS`; it receives the blocking
client and its parsed arguments and returns something printable (a dict or a list of rows).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

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
    p.add_argument("-a", "--all", action="store_true", help="every client's objects (admin)")


def _num(text: str) -> int:
    return int(text, 0)


@command("types", "mdev types offered by the parents on the bus")
def cmd_types(client: BlockingClient, args: argparse.Namespace) -> Any:
    return client.types()


def _list_args(p: argparse.ArgumentParser) -> None:
    _all_arg(p)
    p.add_argument("-d", "--defined", action="store_true", help="persistent definitions")
    p.add_argument("-u", "--uuid", help="with --defined: one definition (JSON: its config)")
    p.add_argument("-p", "--parent", help="with --defined: one parent's definitions")


@command("list", "devices on the bus, or persistent definitions with --defined", _list_args)
def cmd_list(client: BlockingClient, args: argparse.Namespace) -> Any:
    if args.defined:
        out = client.defined(parent=args.parent, uuid=args.uuid)
        if args.json:
            # mdevctl's shapes: one definition's config, or the dumpjson list; both feed
            # `siovctl define --jsonfile`.
            return out["config"] if args.uuid else out["dumpjson"]
        columns = ("uuid", "parent", "mdev_type", "start", "running", "claimed", "attrs")
        return [{k: d[k] for k in columns} for d in out["definitions"]]
    columns = ("uuid", "parent", "type_id", "name", "group_id", "domain_id", "default_pasid")
    return [{k: d[k] for k in columns} for d in client.devices(everything=args.all)]


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
    p.add_argument("--jsonfile", help="definition(s) as JSON: `list --defined --json` output")


@command("define", "persist an mdev definition (admin)", _define_args)
def cmd_define(client: BlockingClient, args: argparse.Namespace) -> Any:
    if args.jsonfile:
        with open(args.jsonfile) as fh:
            data = json.load(fh)
        if isinstance(data, list):  # the dumpjson list: [{parent: [{uuid: config}]}]
            defined = []
            for by_parent in data:
                for parent, entries in by_parent.items():
                    for entry in entries:
                        for uuid, config in entry.items():
                            defined.append(client.define(parent, uuid=uuid, config=config))
            return [{"uuid": d["uuid"], "parent": d["parent"]} for d in defined]
        if not args.parent:
            raise SiovError(22, "define --jsonfile with one definition needs --parent")
        return client.define(args.parent, uuid=args.uuid, config=data)
    if not args.parent or not args.mdev_type:
        raise SiovError(22, "define needs --parent and --type (or --jsonfile)")
    attrs = []
    for item in args.addattr:
        name, sep, value = item.partition("=")
        if not sep:
            raise SiovError(22, f"--addattr {item!r}: expected NAME=VALUE")
        attrs.append({name: value})
    start = "auto" if args.auto else "manual"
    return client.define(args.parent, args.mdev_type, uuid=args.uuid, start=start, attrs=attrs)


def _uuid_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--uuid", required=True)
    p.add_argument("-p", "--parent")


@command("undefine", "remove a persistent definition (admin)", _uuid_opt)
def cmd_undefine(client: BlockingClient, args: argparse.Namespace) -> Any:
    client.undefine(args.uuid, args.parent)
    return {"undefined": args.uuid}


@command("start", "create a defined mdev now (admin)", _uuid_opt)
def cmd_start(client: BlockingClient, args: argparse.Namespace) -> Any:
    return client.start(args.uuid)


@command("stop", "remove a started definition's mdev (admin)", _uuid_opt)
def cmd_stop(client: BlockingClient, args: argparse.Namespace) -> Any:
    client.stop(args.uuid)
    return {"stopped": args.uuid}


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
    p.add_argument("parent", help="parent device, e.g. dsa0 or siov_test")
    p.add_argument("type_id", help="mdev type, e.g. dsa-1dwq")
    p.add_argument("-u", "--uuid", help="UUID to give the mdev (default: generated)")


@command("create", "create an mdev (it lives as long as this command's connection)", _create_args)
def cmd_create(client: BlockingClient, args: argparse.Namespace) -> Any:
    return client.create_mdev(args.parent, args.type_id, args.uuid)


def _uuid_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("uuid")


@command("remove", "remove an mdev you own", _uuid_arg)
def cmd_remove(client: BlockingClient, args: argparse.Namespace) -> Any:
    client.remove_mdev(args.uuid)
    return {"removed": args.uuid}


@command("groups", "IOMMU groups: devices, current and default domain, PASIDs", _all_arg)
def cmd_groups(client: BlockingClient, args: argparse.Namespace) -> Any:
    return [
        {
            "group": g["group_id"],
            "devices": g["devices"],
            "domain": g["domain_id"],
            "default_domain": g["default_domain_id"],
            "pasids": [f"{p['pasid']}->{p['domain_id']}" for p in g["pasids"]],
        }
        for g in client.groups(everything=args.all)
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
    return [{k: d[k] for k in columns} for d in client.domains(everything=args.all)]


@command("iotlb", "IOTLB and fault counters")
def cmd_iotlb(client: BlockingClient, args: argparse.Namespace) -> Any:
    iommu = client.stats().get("iommu", {})
    lookups = iommu.get("iotlb_hits", 0) + iommu.get("iotlb_misses", 0)
    out = {k: v for k, v in iommu.items() if k.startswith(("iotlb", "lazy", "faults"))}
    out["iotlb_hit_rate"] = round(iommu.get("iotlb_hits", 0) / lookups, 4) if lookups else None
    return out


def _translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device UUID")
    p.add_argument("iova", type=_num, help="I/O virtual address (0x... accepted)")
    p.add_argument("length", type=_num, nargs="?", default=4096)
    p.add_argument("--pasid", type=_num, default=0, help="PASID (default 0: no PASID)")
    p.add_argument("--write", action="store_true", help="translate for a write")


@command("translate", "translate an IOVA range of a device through the IOMMU", _translate_args)
def cmd_translate(client: BlockingClient, args: argparse.Namespace) -> Any:
    out = client.translate(args.device, args.iova, args.length, write=args.write, pasid=args.pasid)
    if args.json:
        return out
    rows: list[dict[str, Any]] = [
        {"iova": hex(r["iova"]), "phys": hex(r["phys"]), "length": r["length"], "prot": r["prot"]}
        for r in out["runs"]
    ]
    if out["fault"] is not None:
        fault = out["fault"]
        rows.append({"iova": hex(fault["iova"]), "phys": f"FAULT reason {fault['reason']:#x}"})
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

_WQ_OPTIONS: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    # (short, long, attribute, type): accel-config config-wq's options
    ("-g", "--group-id", "group_id", int),
    ("-s", "--wq-size", "size", int),
    ("-p", "--priority", "priority", int),
    ("-b", "--block-on-fault", "block_on_fault", int),
    ("-t", "--threshold", "threshold", int),
    ("-y", "--type", "type", str),
    ("-n", "--name", "name", str),
    ("-d", "--driver-name", "driver_name", str),
    ("-m", "--mode", "mode", str),
    ("-c", "--max-batch-size", "max_batch_size", int),
    ("-x", "--max-transfer-size", "max_transfer_size", int),
    ("-a", "--ats-disable", "ats_disable", int),
    ("-r", "--prs-disable", "prs_disable", int),
    ("-o", "--op-config", "op_config", str),
)
_GROUP_OPTIONS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("--read-buffers-reserved", "read_buffers_reserved", int),
    ("--read-buffers-allowed", "read_buffers_allowed", int),
    ("--use-read-buffer-limit", "use_read_buffer_limit", int),
    ("--traffic-class-a", "traffic_class_a", int),
    ("--traffic-class-b", "traffic_class_b", int),
)


def _accel_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="accel_command", required=True, metavar="ACTION")
    sub.add_parser("list", help="devices, groups, engines and WQs as accel-config JSON")
    device = sub.add_parser("config-device", help="set device attributes (admin)")
    device.add_argument("device", help="e.g. dsa0")
    device.add_argument("-l", "--read-buffer-limit", dest="read_buffer_limit", type=int)
    group = sub.add_parser("config-group", help="set group attributes (admin)")
    group.add_argument("group", help="e.g. dsa0/group0.0")
    for flag, attr, kind in _GROUP_OPTIONS:
        group.add_argument(flag, dest=attr, type=kind)
    engine = sub.add_parser("config-engine", help="move an engine to a group (admin)")
    engine.add_argument("engine", help="e.g. dsa0/engine0.1")
    engine.add_argument("-g", "--group-id", dest="group_id", type=int)
    wq = sub.add_parser("config-wq", help="set WQ attributes (admin)")
    wq.add_argument("wq", help="e.g. dsa0/wq0.1")
    for short, flag, attr, kind in _WQ_OPTIONS:
        wq.add_argument(short, flag, dest=attr, type=kind)
    for action, what in (("enable-device", "device"), ("disable-device", "device")):
        sub.add_parser(action, help=f"{action.split('-')[0]} a device (admin)").add_argument(what)
    for action in ("enable-wq", "disable-wq"):
        sub.add_parser(action, help=f"{action.split('-')[0]} a WQ (admin)").add_argument("wq")
    save = sub.add_parser("save-config", help="the configuration as load-config takes it")
    save.add_argument("-s", "--saved-file", metavar="FILE", help="write it here (default: print)")
    load = sub.add_parser("load-config", help="apply a saved configuration (admin)")
    load.add_argument("-c", "--config", metavar="FILE", required=True)
    load.add_argument("-e", "--enable", action="store_true", help="enable devices and WQs after")


def _attrs(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


@command("accel", "the accelerator, as accel-config shows and configures it", _accel_args)
def cmd_accel(client: BlockingClient, args: argparse.Namespace) -> Any:
    action = args.accel_command
    if action == "list":
        devices = client.accel_list()
        return devices if args.json else json.dumps(devices, indent=2)
    if action == "config-device":
        return client.accel_config_device(args.device, **_attrs(args, ["read_buffer_limit"]))
    if action == "config-group":
        attrs = _attrs(args, [attr for _, attr, _ in _GROUP_OPTIONS])
        return client.accel_config_group(args.group, **attrs)
    if action == "config-engine":
        return client.accel_config_engine(args.engine, **_attrs(args, ["group_id"]))
    if action == "config-wq":
        return client.accel_config_wq(args.wq, **_attrs(args, [a for _, _, a, _ in _WQ_OPTIONS]))
    if action == "enable-device":
        client.accel_enable_device(args.device)
        return {"enabled": args.device}
    if action == "disable-device":
        client.accel_disable_device(args.device)
        return {"disabled": args.device}
    if action == "enable-wq":
        client.accel_enable_wq(args.wq)
        return {"enabled": args.wq}
    if action == "disable-wq":
        client.accel_disable_wq(args.wq)
        return {"disabled": args.wq}
    if action == "save-config":
        config = client.accel_save_config()
        if args.saved_file:
            with open(args.saved_file, "w") as fh:
                json.dump(config, fh, indent=2)
                fh.write("\n")
            return {"saved": args.saved_file}
        return config if args.json else json.dumps(config, indent=2)
    assert action == "load-config"
    try:
        with open(args.config) as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SiovError(errno.EINVAL, f"{args.config}: {exc}") from None
    if isinstance(config, dict):
        config = [config]
    devices = client.accel_load_config(config, enable=args.enable)
    return devices if args.json else json.dumps(devices, indent=2)


# ---- main ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siovctl", description="Control and inspect siovd.")
    p.add_argument(
        "--socket", metavar="PATH", help=f"daemon socket (default {default_socket_path()})"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--key",
        metavar="FILE",
        default=os.environ.get("SIOV_KEY"),
        help="private key for key authentication (default $SIOV_KEY)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, setup, help_text) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text, description=help_text))
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
