"""``siovctl``: talk to siovd from a shell. Human tables by default, JSON with ``--json``.

Every subcommand is a small function registered in :data:`COMMANDS`; it receives the blocking
client and its parsed arguments and returns something printable (a dict or a list of rows).
"""

from __future__ import annotations

import argparse
import json
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


# ---- main ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siovctl", description="Control and inspect siovd.")
    p.add_argument(
        "--socket", metavar="PATH", help=f"daemon socket (default {default_socket_path()})"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--key", metavar="FILE", help="private key for key authentication")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, setup, help_text) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text, description=help_text))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fn = COMMANDS[args.command][0]
    try:
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
