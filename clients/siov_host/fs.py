"""The idxd sysfs view as a FUSE file system (pyfuse3, served by trio), live from siovd.

Reads: an attribute's text is taken from a fresh ``ACCEL_LIST`` when the file is opened (as
kernfs shows an attribute at its first read), so a state change is visible the moment the
store that caused it returns. Stores: every file is opened ``direct_io``, so each ``write(2)``
reaches :meth:`SysfsOps.write` with the bare value, which replaces the attribute (one daemon
command) or fails with the errno ``drivers/dma/idxd/sysfs.c`` would return.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3

from siov import Client
from siov.errors import SiovError
from siov_host.tree import Node, OpCapFormat, Store, SysfsError, Tree, store_for

ROOT = pyfuse3.ROOT_INODE

_Op = TypeVar("_Op", bound=Callable[..., Awaitable[Any]])


def _guarded(fn: _Op) -> _Op:
    """An unexpected error in one request answers EIO to that request (and is printed)
    instead of ending the file system for everybody."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except SiovError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            traceback.print_exc(file=sys.stderr)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class _Open:
    path: str
    data: bytes | None
    read_errno: int


class OpCapByReader:
    """Which op_cap format a reading process expects.

    The kernel decides the format (four ``%#llx`` words before the 256-bit opcode bitmap
    replaced them); a distribution pairs its accel-config with its kernel. The view shows
    ``default`` (the bitmap, what this machine's kernel would print) unless the reader has
    a libaccel-config mapped whose parser is the old ``"%lx %lx %lx %lx"`` one (3.5.3), which
    would otherwise drop op_cap silently. ``forced`` pins one format for everyone.
    """

    def __init__(self, default: OpCapFormat = "bitmap", forced: OpCapFormat | None = None):
        self.default: OpCapFormat = default
        self.forced = forced
        self._libs: dict[tuple[str, int, int], OpCapFormat] = {}

    def for_pid(self, pid: int) -> OpCapFormat:
        if self.forced is not None:
            return self.forced
        try:
            with open(f"/proc/{pid}/maps") as fh:
                libs = {line.split()[-1] for line in fh if "libaccel-config" in line}
        except OSError:
            return self.default
        for lib in sorted(libs):
            fmt = self._lib_format(lib)
            if fmt is not None:
                return fmt
        return self.default

    def _lib_format(self, lib: str) -> OpCapFormat | None:
        try:
            st = os.stat(lib)
        except OSError:
            return None
        key = (lib, st.st_ino, st.st_mtime_ns)
        if key not in self._libs:
            with open(lib, "rb") as fh:
                image = fh.read()
            self._libs[key] = "u64x4" if b"%lx %lx %lx %lx" in image else "bitmap"
        return self._libs[key]


class SysfsOps(pyfuse3.Operations):
    """pyfuse3 operations over :class:`Tree` snapshots."""

    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(
        self,
        client: Client,
        *,
        op_cap: OpCapByReader | None = None,
        on_store: Callable[[Store], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.op_cap = op_cap or OpCapByReader()
        self.on_store = on_store
        self.tree: Tree | None = None
        self._ino: dict[str, int] = {"": ROOT}
        self._path: dict[int, str] = {ROOT: ""}
        self._open: dict[int, _Open] = {}
        self._next_fh = 1
        self.uid = os.getuid()
        self.gid = os.getgid()

    # -- snapshots --

    async def refresh(self, fmt: OpCapFormat | None = None) -> Tree:
        devices = await self.client.accel_list()
        tree = Tree(devices, op_cap_format=fmt or self.op_cap.default)
        self.tree = tree
        return tree

    async def _cached(self) -> Tree:
        return self.tree if self.tree is not None else await self.refresh()

    def _inode(self, path: str) -> int:
        ino = self._ino.get(path)
        if ino is None:
            ino = len(self._path) + 1
            while ino in self._path:
                ino += 1
            self._ino[path] = ino
            self._path[ino] = path
        return ino

    def _attr(self, path: str, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self._inode(path)
        if node.kind == "dir":
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            attr.st_size = 0
        elif node.kind == "link":
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_nlink = 1
            attr.st_size = len((node.content or "").encode())
        else:
            attr.st_mode = stat.S_IFREG | (0o644 if node.writable else 0o444)
            if path.startswith("dev/"):
                attr.st_mode = stat.S_IFREG | 0o600
            attr.st_nlink = 1
            attr.st_size = 4096
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_blksize = 4096
        attr.st_blocks = 0
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        return attr

    async def _node(self, path: str, *, fresh: bool = False) -> Node:
        tree = await (self.refresh() if fresh else self._cached())
        node = tree.get(path)
        if node is None or node.dynamic:
            tree = await self.refresh()
            node = tree.get(path)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _path_of(self, inode: int) -> str:
        path = self._path.get(inode)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    # -- operations --

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._path_of(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            path = parent
        elif text == "..":
            path = parent.rpartition("/")[0] if "/" in parent else ""
        else:
            path = f"{parent}/{text}" if parent else text
        return self._attr(path, await self._node(path))

    @_guarded
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        path = self._path_of(inode)
        return self._attr(path, await self._node(path))

    @_guarded
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        # O_TRUNC from a shell redirection: sysfs ignores the truncate
        path = self._path_of(inode)
        return self._attr(path, await self._node(path))

    @_guarded
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = await self._node(self._path_of(inode))
        if node.kind != "link":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.content or "")

    @_guarded
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = await self._node(self._path_of(inode))
        if node.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path_of(fh)
        node = await self._node(path)
        for index, name in enumerate(node.children):
            if index < start_id:
                continue
            child = f"{path}/{name}" if path else name
            tree = await self._cached()
            child_node = tree.get(child)
            if child_node is None:
                continue
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attr(child, child_node), index + 1
            ):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    @_guarded
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        path = self._path_of(inode)
        fmt = self.op_cap.for_pid(ctx.pid) if path.endswith("/op_cap") else None
        tree = await self.refresh(fmt)
        node = tree.get(path)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.kind == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        # kernfs_fop_open: EACCES when opening a read-only attribute for writing (even root)
        if flags & (os.O_WRONLY | os.O_RDWR) and not node.writable:
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = self._next_fh
        self._next_fh += 1
        data = None if node.content is None else node.content.encode()
        self._open[fh] = _Open(path, data, node.read_errno)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        entry = self._open.get(fh)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if entry.data is None:
            raise pyfuse3.FUSEError(entry.read_errno or errno.EIO)
        return entry.data[off : off + size]

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        entry = self._open.get(fh)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        tree = await self.refresh()
        try:
            store = store_for(tree, entry.path, buf)
            await self.execute(store)
        except SysfsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except SiovError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return len(buf)

    async def execute(self, store: Store) -> None:
        c = self.client
        if store.command == "config_device":
            await c.accel_config_device(store.target, **store.attrs)
        elif store.command == "config_group":
            await c.accel_config_group(store.target, **store.attrs)
        elif store.command == "config_engine":
            await c.accel_config_engine(store.target, **store.attrs)
        elif store.command == "config_wq":
            await c.accel_config_wq(store.target, **store.attrs)
        elif store.command == "enable_device":
            await c.accel_enable_device(store.target)
        elif store.command == "disable_device":
            await c.accel_disable_device(store.target)
        elif store.command == "enable_wq":
            await c.accel_enable_wq(store.target)
        elif store.command == "disable_wq":
            await c.accel_disable_wq(store.target)
        if self.on_store is not None:
            await self.on_store(store)
        self.tree = None

    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    async def flush(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = 4096
        data.f_frsize = 4096
        data.f_namemax = 255
        return data
