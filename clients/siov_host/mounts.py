"""Mount namespace plumbing for ``siov-run`` (Linux syscalls through ctypes).

The view cannot be mounted at ``/sys/bus/dsa`` on a host without the idxd driver (sysfs takes
no new directories), so each of ``/sys/bus``, ``/sys/module`` and ``/dev`` is covered one level
up by a tmpfs in which every real entry is bind-mounted back beside the emulated one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def private_namespace() -> None:
    """A mount namespace of our own whose mounts never propagate back to the host."""
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
        with open("/proc/self/setgroups", "w") as fh:
            fh.write("deny")
        with open("/proc/self/uid_map", "w") as fh:
            fh.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as fh:
            fh.write(f"0 {gid} 1")
    else:
        unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def overlay_one_level_up(target: str, extra: dict[str, str], stash: str) -> None:
    """Cover ``target`` with a tmpfs holding its real entries (bind-mounted back) and the
    ``extra`` directories (name -> source directory, bind-mounted)."""
    os.makedirs(stash, exist_ok=True)
    mount(target, stash, None, MS_BIND | MS_REC)
    mount("siov-run", target, "tmpfs", 0, "mode=0755")
    for entry in os.scandir(stash):
        if entry.name in extra:
            continue
        dest = os.path.join(target, entry.name)
        src = os.path.join(stash, entry.name)
        try:
            st = os.lstat(src)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dest)
            continue
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dest, stat.S_IMODE(st.st_mode))
        else:
            with open(dest, "w"):
                pass
        try:
            mount(src, dest, None, MS_BIND | MS_REC)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.ENOENT):
                raise
    for name, source in extra.items():
        dest = os.path.join(target, name)
        os.makedirs(dest, exist_ok=True)
        mount(source, dest, None, MS_BIND | MS_REC)
