"""``siovd``: parse options, load the config, run the server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence

import structlog
import trio

from . import __version__, logs
from .config import Config, ConfigError, default_socket_path, load, with_overrides
from .daemon import Daemon
from .errors import SiovError
from .server import Server, bind_unix_socket

log = structlog.get_logger("siovd")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="siovd",
        description="siov daemon: an emulated IOMMU and DSA-like accelerator on a Unix socket.",
    )
    p.add_argument("--socket", metavar="PATH", help="listen on PATH (default: from config)")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: embedded)")
    p.add_argument(
        "--print-config", action="store_true", help="print the effective config as JSON and exit"
    )
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"siovd {__version__}")
    return p.parse_args(argv)


def effective_config(args: argparse.Namespace) -> Config:
    cfg = load(args.config)
    cfg = with_overrides(
        cfg,
        server__socket=args.socket,
        log__format=args.log_format,
        log__level=args.log_level,
    )
    if not cfg.server.socket:
        cfg = with_overrides(cfg, server__socket=default_socket_path())
    return cfg


def reload(daemon: Daemon, config_path: str | None) -> None:
    """SIGHUP: re-read the config file and apply what can change at run time."""
    try:
        new = with_overrides(
            load(config_path),
            server__socket=daemon.config.server.socket,
            log__format=daemon.config.log.format,
        )
    except ConfigError as exc:
        log.error("reload failed, keeping the running config", error=str(exc))
        return
    applied, restart = daemon.reload(new)
    if "log.level" in applied:
        logs.set_level(daemon.config.log.level)
    log.info(
        "config reloaded",
        changed={k: {"old": old, "new": new} for k, (old, new) in applied.items()},
        needs_restart=restart,
    )


async def run(daemon: Daemon, config_path: str | None = None) -> None:
    cfg = daemon.config
    server = Server(daemon)
    listener = bind_unix_socket(cfg.server.socket, cfg.server.socket_mode)
    path = cfg.server.socket
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, listener)
                log.info("listening", socket=path, pid=os.getpid(), version=__version__)
                async for signum in signals:
                    log.info("signal received", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        reload(daemon, config_path)
                        continue
                    await server.shutdown(daemon.config.server.grace_period_s)
                    break
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = effective_config(args)
    except ConfigError as exc:
        sys.stderr.write(f"siovd: config error: {exc}\n")  # logging is not set up yet
        return 2
    if args.print_config:
        json.dump(cfg.to_dict(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    logs.configure(cfg.log.level, cfg.log.format)
    try:
        daemon = Daemon(cfg, cfg.server.socket)
    except ConfigError as exc:
        sys.stderr.write(f"siovd: config error: {exc}\n")
        return 2
    try:
        trio.run(run, daemon, args.config)
    except SiovError as exc:
        log.error("cannot start", error=exc.message)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
