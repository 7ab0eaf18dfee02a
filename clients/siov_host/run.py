"""``siov-run [--socket S] -- CMD...``: run an unmodified DSA program against siovd.

The launcher enters a mount namespace of its own (as root ``unshare -m``; otherwise a user
namespace too), mounts the idxd view (a FUSE file system fed live by siovd) and lays it over
``/sys/bus``, ``/sys/module`` and ``/dev`` one level up, with the real entries bind-mounted back
beside ``dsa``, ``idxd`` and ``dsa``. Then it runs CMD there with ``LD_PRELOAD`` set to the portal
library, whose stores it forwards to siovd. Only CMD and its children see any of it; the host
is untouched; any number of launchers share one siovd and its devices.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from importlib import resources

import trio

import siov
from siov_host import mounts
from siov_host.broker import Broker

#: modules the runner scripts load: the emulated idxd "module" is always loaded
IDXD_MODULES = ("idxd", "idxd_bus", "idxd_vdev", "idxd_uacce", "iaa_crypto", "iax_crypto")


def library_path() -> str:
    path = str(resources.files("siov_host") / "libsiov_portal.so")
    if not os.path.exists(path):
        raise SystemExit(
            f"siov-run: {path} is missing: reinstall siov (its build compiles it with cc)"
        )
    return path


def _write_script(bindir: str, name: str, script: str) -> None:
    path = os.path.join(bindir, name)
    with open(path, "w") as fh:
        fh.write(script)
    os.chmod(path, 0o755)


def _module_shims(bindir: str) -> None:
    """``modprobe``, ``lsmod`` and ``rmmod`` first on PATH, for the idxd family only: the
    emulated idxd module is loaded (the view's ``/sys/module/idxd``), ``modprobe idxd``
    succeeds, ``rmmod idxd`` unbinds every WQ and device (what unloading the driver does to
    them) through the view's sysfs. Other modules go to the real tools."""
    os.makedirs(bindir, exist_ok=True)
    names = " ".join(IDXD_MODULES)
    real = {tool: shutil.which(tool) or "" for tool in ("modprobe", "lsmod", "rmmod")}
    _write_script(
        bindir,
        "modprobe",
        f"""#!/bin/sh
# siov-run: the idxd driver is emulated by siovd and always loaded
for arg in "$@"; do
  case "$arg" in -*) continue ;; esac
  case " {names} " in *" $arg "*) continue ;; esac
  if [ -n "{real["modprobe"]}" ]; then exec "{real["modprobe"]}" "$@"; fi
  echo "modprobe: FATAL: Module $arg not found." >&2
  exit 1
done
exit 0
""",
    )
    _write_script(
        bindir,
        "lsmod",
        f"""#!/bin/sh
# siov-run: the real modules, and the emulated idxd
if [ -n "{real["lsmod"]}" ]; then
  "{real["lsmod"]}" | grep -v '^idxd '
else
  echo "Module                  Size  Used by"
fi
echo "idxd                       0  0"
""",
    )
    _write_script(
        bindir,
        "rmmod",
        f"""#!/bin/sh
# siov-run: "unloading" the emulated idxd unbinds its WQs and devices
for arg in "$@"; do
  case "$arg" in -*) continue ;; esac
  if [ "$arg" != idxd ]; then
    if [ -n "{real["rmmod"]}" ]; then exec "{real["rmmod"]}" "$@"; fi
    echo "rmmod: ERROR: Module $arg is not currently loaded" >&2
    exit 1
  fi
done
for obj in /sys/bus/dsa/devices/wq* /sys/bus/dsa/devices/dsa*; do
  [ -e "$obj/driver" ] || continue
  drv=$(basename "$(readlink "$obj/driver")")
  if ! printf %s "$(basename "$obj")" > "/sys/bus/dsa/drivers/$drv/unbind"; then
    echo "rmmod: ERROR: Module idxd is in use" >&2
    exit 1
  fi
done
exit 0
""",
    )


def _layout(fs: str, work: str) -> None:
    """Lay the view over the host's trees (blocking: run in a thread while FUSE serves)."""
    mounts.overlay_one_level_up(
        "/sys/bus", {"dsa": os.path.join(fs, "bus/dsa")}, os.path.join(work, "stash/bus")
    )
    mounts.overlay_one_level_up(
        "/sys/module",
        {"idxd": os.path.join(fs, "module/idxd")},
        os.path.join(work, "stash/module"),
    )
    mounts.overlay_one_level_up(
        "/dev", {"dsa": os.path.join(fs, "dev/dsa")}, os.path.join(work, "stash/dev")
    )


def child_env(work: str, lib: str | None, broker_path: str) -> dict[str, str]:
    env = dict(os.environ)
    if lib is not None:
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = f"{lib} {preload}".strip()
    env["SIOV_PORTAL_SOCKET"] = broker_path
    env["PATH"] = os.path.join(work, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    return env


async def _serve(args: argparse.Namespace, work: str) -> int:
    import pyfuse3

    from siov_host.fs import OpCapByReader, SysfsOps

    fs = os.path.join(work, "fs")
    os.makedirs(fs)
    broker_path = os.path.join(work, "portal.sock")
    lib = None if args.no_preload else library_path()
    _module_shims(os.path.join(work, "bin"))
    forced = None if args.op_cap_format == "auto" else args.op_cap_format
    async with siov.connect(args.socket, name="siov-run") as client:
        ops = SysfsOps(client, op_cap=OpCapByReader(forced=forced))
        await ops.refresh()
        options = {"fsname=siov-idxd", "subtype=siov"}
        if os.geteuid() == 0:
            options.add("allow_other")
        pyfuse3.init(ops, fs, options)
        status = 0
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                broker = Broker(broker_path, args.socket)
                await nursery.start(broker.serve)
                await trio.to_thread.run_sync(_layout, fs, work)
                env = child_env(work, lib, broker_path)
                proc = await trio.lowlevel.open_process(args.command, env=env)
                try:
                    status = await proc.wait()
                finally:
                    if proc.returncode is None:
                        proc.kill()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=False)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="siov-run",
        description="Run a program against siovd's emulated DSA: the idxd sysfs view, "
        "/dev/dsa and WQ portals, in a private mount namespace.",
    )
    parser.add_argument("--socket", help="siovd's socket (default: $SIOV_SOCKET or the usual)")
    parser.add_argument(
        "--op-cap-format",
        choices=["auto", "u64x4", "bitmap"],
        default="auto",
        help="op_cap as an old kernel (four 64-bit words, accel-config 3.x) or a new one "
        "(256-bit bitmap, accel-config 4.x) prints it; auto: by the reader's libaccel-config",
    )
    parser.add_argument(
        "--no-preload", action="store_true", help="do not set LD_PRELOAD (sysfs view only)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given (siov-run [--socket S] -- CMD...)")
    if args.socket is None:
        args.socket = siov.default_socket_path()
    try:
        mounts.private_namespace()
    except OSError:
        return 125
    work = tempfile.mkdtemp(prefix="siov-run-")
    try:
        status = trio.run(_serve, args, work)
    except siov.SiovError:
        return 125
    finally:
        _cleanup(work)
    if status < 0:
        # die of the same signal as the program did, so the caller sees it
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def _cleanup(work: str) -> None:
    """Undo what lies under the work dir. Never a recursive delete: the stash directories are
    bind mounts of the real /dev and /sys trees, so only our own files are unlinked and
    directories removed with rmdir, which fails harmlessly on anything still mounted."""
    for sub in ("fs", "stash/bus", "stash/module", "stash/dev"):
        try:
            mounts.umount(os.path.join(work, sub))
        except OSError:
            pass
    for name in ("portal.sock", "bin/modprobe", "bin/lsmod", "bin/rmmod"):
        try:
            os.unlink(os.path.join(work, name))
        except OSError:
            pass
    for sub in ("bin", "fs", "stash/bus", "stash/module", "stash/dev", "stash", ""):
        try:
            os.rmdir(os.path.join(work, sub) if sub else work)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
