"""``siovd``: parse options, load the config, run the server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence

import structlog
import trio

from siovd import __version__
from siovd.host import logs
from siovd.host.config import Config, ConfigError, default_socket_path, load, with_overrides
from siovd.host.fdlimit import FdBudget, check_nofile
from siovd.host.systemd import Notifier, listen_fds, stream_listener, watchdog_interval
from siovd.model.errors import SiovError
from siovd.service.daemon import Daemon
from siovd.service.server import Server, bind_unix_socket

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
    p.add_argument("--state-dir", metavar="DIR", help="persistent definitions (default: config)")
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
        state__dir=args.state_dir,
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
            state__dir=daemon.config.state.dir or None,
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


def open_listener(daemon: Daemon) -> tuple[socket.socket, str, bool]:
    """The socket systemd passed us (the one named ``siovd``, else the first), or our own.

    Returns the listener, its path, and whether it was inherited (then systemd owns the file).
    """
    inherited = listen_fds()
    if inherited:
        chosen = next((f for f in inherited if f.name == "siovd"), inherited[0])
        for other in inherited:
            if other is not chosen:
                os.close(other.fd)
        listener = stream_listener(chosen.fd)
        path = listener.getsockname()
        return listener, path if isinstance(path, str) else daemon.config.server.socket, True
    cfg = daemon.config.server
    return bind_unix_socket(cfg.socket, cfg.socket_mode), cfg.socket, False


async def watchdog(notifier: Notifier, interval: float) -> None:
    """Ping systemd from the event loop itself: a stuck loop stops the pings and is restarted."""
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


async def run(daemon: Daemon, config_path: str | None = None) -> None:
    server = Server(daemon)
    listener, path, inherited = open_listener(daemon)
    daemon.socket_path = path
    notifier = Notifier.from_environ()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, listener)
                log.info(
                    "listening",
                    socket=path,
                    pid=os.getpid(),
                    version=__version__,
                    activated=inherited,
                    state_dir=daemon.state_dir,
                )
                for uuid, error in daemon.autostart_errors.items():
                    log.warning("autostart failed", mdev=uuid, error=error)
                notifier.ready(f"listening on {path}")
                interval = watchdog_interval()
                if interval is not None:
                    nursery.start_soon(watchdog, notifier, interval)
                async for signum in signals:
                    log.info("signal received", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        notifier.notify("RELOADING=1")
                        reload(daemon, config_path)
                        notifier.ready("config reloaded")
                        continue
                    notifier.stopping("shutting down")
                    await server.shutdown(daemon.config.server.grace_period_s)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        notifier.close()
        daemon.close()
        if not inherited:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    log.info("stopped")


def check_fd_limit(daemon: Daemon) -> FdBudget:
    """Raise RLIMIT_NOFILE to what the limits need; say what the limit allows (fdlimit.py)."""
    bound = sum(d.total_wq_size + len(d.wqs) for d in daemon.accel.devices.values())
    budget = check_nofile(daemon.config, bound)
    daemon.fd_budget = budget.__dict__ | {"clients_allowed": budget.clients_allowed}
    text = budget.message(daemon.config)
    if budget.enough:
        log.info("fd limit", detail=text, raised_from=budget.raised_from)
    else:
        log.warning("fd limit too low", detail=text, setrlimit_error=budget.error)
    return budget


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
    except SiovError as exc:  # e.g. the state directory is locked by another daemon
        log.error("cannot start", error=exc.message)
        return 1
    check_fd_limit(daemon)
    # Everything made so far (modules, config, the embedded device) lives as long as the
    # daemon: out of the cyclic GC's way, so a full collection visits only what clients made
    # and does not stall every connection for the whole heap's sake.
    gc.collect()
    gc.freeze()
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
