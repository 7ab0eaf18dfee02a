"""vfio-user, the real one: binary messages as ``qemu docs/interop/vfio-user.rst`` defines them.

siov's own protocol borrows vfio-user's header but carries msgpack bodies. This module speaks
the specification itself, so that a VMM's vfio-user client (QEMU's ``vfio-user-pci``) can drive
an mdev siovd serves. It is sans-IO: :class:`Framer` turns bytes and file descriptors into
:class:`Message` objects, and the ``parse_*``/``pack_*`` functions turn payloads into the
request dataclasses and replies back into bytes. Every field uses host endianness (the spec);
siov runs on little-endian hosts, so the structs are little-endian.

Errors are :class:`VfioUserError` carrying the errno the reply reports. Per the spec an error
reply is the header alone, with the Error flag and ``error_no`` set.
"""

from __future__ import annotations

import enum
import errno
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

HEADER: Final = struct.Struct("<HHIII")
HEADER_SIZE: Final = HEADER.size  # 16

# header flags (vfio-user.rst "Header"; libvfio-user vfio-user.h)
FLAG_TYPE_MASK: Final = 0xF
TYPE_COMMAND: Final = 0x0
TYPE_REPLY: Final = 0x1
FLAG_NO_REPLY: Final = 0x10
FLAG_ERROR: Final = 0x20

#: The version siov speaks: 0.2 (twin socket and write-multiple are not offered).
VERSION_MAJOR: Final = 0
VERSION_MINOR: Final = 2
#: What siov allows by default: the payload of one message, and the data of one access.
MAX_DATA_XFER: Final = 1 << 20
MAX_MSG_SIZE: Final = HEADER_SIZE + 64 + MAX_DATA_XFER
MAX_MSG_FDS: Final = 8
MAX_DMA_MAPS: Final = 4096
#: The default the spec gives a peer that names no ``max_msg_fds``.
DEFAULT_PEER_FDS: Final = 1
DEFAULT_PEER_XFER: Final = 1 << 20


class Cmd(enum.IntEnum):
    """Command numbers (vfio-user.rst "Commands")."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


# DMA_MAP / DMA_UNMAP flags
DMA_READ_FLAG: Final = 1 << 0
DMA_WRITE_FLAG: Final = 1 << 1
UNMAP_GET_DIRTY_BITMAP: Final = 1 << 0
UNMAP_ALL: Final = 1 << 1

# DEVICE_GET_INFO flags (linux/vfio.h)
DEVICE_FLAGS_RESET: Final = 1 << 0
DEVICE_FLAGS_PCI: Final = 1 << 1

# region info flags and capabilities
REGION_INFO_FLAG_READ: Final = 1 << 0
REGION_INFO_FLAG_WRITE: Final = 1 << 1
REGION_INFO_FLAG_MMAP: Final = 1 << 2
REGION_INFO_FLAG_CAPS: Final = 1 << 3
REGION_INFO_CAP_SPARSE_MMAP: Final = 1

# VFIO PCI region and IRQ indexes
PCI_BAR0_REGION: Final = 0
PCI_BAR2_REGION: Final = 2
PCI_ROM_REGION: Final = 6
PCI_CONFIG_REGION: Final = 7
PCI_NUM_REGIONS: Final = 9
PCI_INTX_IRQ: Final = 0
PCI_MSI_IRQ: Final = 1
PCI_MSIX_IRQ: Final = 2
PCI_ERR_IRQ: Final = 3
PCI_REQ_IRQ: Final = 4
PCI_NUM_IRQS: Final = 5

# IRQ info flags
IRQ_INFO_EVENTFD: Final = 1 << 0
IRQ_INFO_MASKABLE: Final = 1 << 1
IRQ_INFO_AUTOMASKED: Final = 1 << 2
IRQ_INFO_NORESIZE: Final = 1 << 3

# SET_IRQS flags
IRQ_SET_DATA_NONE: Final = 1 << 0
IRQ_SET_DATA_BOOL: Final = 1 << 1
IRQ_SET_DATA_EVENTFD: Final = 1 << 2
IRQ_SET_ACTION_MASK: Final = 1 << 3
IRQ_SET_ACTION_UNMASK: Final = 1 << 4
IRQ_SET_ACTION_TRIGGER: Final = 1 << 5
IRQ_SET_DATA_MASK: Final = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_MASK_ALL: Final = (
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER
)

_VERSION = struct.Struct("<HH")
_DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, offset, addr, size
_DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, addr, size
_DEVICE_INFO = struct.Struct("<IIII")  # argsz, flags, num_regions, num_irqs
_REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
_CAP_HEADER = struct.Struct("<HHI")  # id, version, next
_SPARSE_HEAD = struct.Struct("<II")  # nr_areas, reserved
_SPARSE_AREA = struct.Struct("<QQ")  # offset, size
_IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count
_IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count
_REGION_ACCESS = struct.Struct("<QII")  # offset, region, count
_DMA_ACCESS = struct.Struct("<QQ")  # address, count

DMA_MAP_SIZE: Final = _DMA_MAP.size
DMA_UNMAP_SIZE: Final = _DMA_UNMAP.size
DEVICE_INFO_SIZE: Final = _DEVICE_INFO.size
REGION_INFO_SIZE: Final = _REGION_INFO.size
IRQ_INFO_SIZE: Final = _IRQ_INFO.size
IRQ_SET_SIZE: Final = _IRQ_SET.size
REGION_ACCESS_SIZE: Final = _REGION_ACCESS.size
DMA_ACCESS_SIZE: Final = _DMA_ACCESS.size


class VfioUserError(Exception):
    """A request the server refuses: the reply carries ``errno`` with the Error flag."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


class FramingError(Exception):
    """The byte stream cannot be trusted any more (a header that lies): close the socket."""


@dataclass(slots=True)
class Message:
    msg_id: int
    command: int
    flags: int
    error_no: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.flags & FLAG_TYPE_MASK == TYPE_REPLY

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & FLAG_NO_REPLY)


class Framer:
    """Bytes and fds in, whole messages out.

    A sender passes a message's fds with that message's bytes (one ``sendmsg``), and a Unix
    stream socket ends a read right after the bytes that carried fds. So the fds of one read
    belong to the message holding the last byte of that read: the framer remembers each batch
    of fds at that stream position and hands it out with the message that covers it.
    """

    def __init__(self, max_msg_size: int = MAX_MSG_SIZE) -> None:
        self.max_msg_size = max_msg_size
        self._buf = bytearray()
        self._base = 0  # stream position of _buf[0]
        self._fds: list[tuple[int, list[int]]] = []  # (stream position, fds)

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        self._buf += data
        if fds:
            self._fds.append((self._base + len(self._buf) - 1, list(fds)))

    def take_fds(self) -> list[int]:
        """Every fd not yet handed out with a message (for the caller to close)."""
        out = [fd for _, batch in self._fds for fd in batch]
        self._fds = []
        return out

    def messages(self) -> Iterator[Message]:
        buf = self._buf
        while len(buf) >= HEADER_SIZE:
            msg_id, command, size, flags, error_no = HEADER.unpack_from(buf, 0)
            if size < HEADER_SIZE or size > self.max_msg_size:
                raise FramingError(
                    f"message size {size} outside {HEADER_SIZE}..{self.max_msg_size}"
                )
            if len(buf) < size:
                return
            payload = bytes(buf[HEADER_SIZE:size])
            del buf[:size]
            end = self._base + size
            self._base = end
            fds: list[int] = []
            while self._fds and self._fds[0][0] < end:
                fds.extend(self._fds.pop(0)[1])
            yield Message(msg_id, command, flags, error_no, payload, fds)


def pack_message(
    msg_id: int, command: int, payload: bytes = b"", *, flags: int = TYPE_COMMAND, error_no: int = 0
) -> bytes:
    return HEADER.pack(msg_id, command, HEADER_SIZE + len(payload), flags, error_no) + payload


def pack_reply(msg: Message, payload: bytes = b"") -> bytes:
    return pack_message(msg.msg_id, msg.command, payload, flags=TYPE_REPLY)


def pack_error(msg_id: int, command: int, err: int) -> bytes:
    """The spec's error reply: the header alone, Error flag and errno."""
    return pack_message(msg_id, command, b"", flags=TYPE_REPLY | FLAG_ERROR, error_no=err)


def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise VfioUserError(errno.EINVAL, f"{what}: payload of {len(payload)} bytes, need {size}")


# -- VERSION ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    capabilities: dict[str, Any]


def parse_version(payload: bytes) -> Version:
    """VERSION: major, minor and an optional NUL-terminated JSON object. EINVAL for a bad
    JSON text, a missing NUL, a ``capabilities`` that is not an object or values of the wrong
    type (libvfio-user's rules)."""
    _need(payload, _VERSION.size, "VERSION")
    major, minor = _VERSION.unpack_from(payload, 0)
    rest = payload[_VERSION.size :]
    caps: dict[str, Any] = {}
    if rest:
        if rest[-1] != 0:
            raise VfioUserError(errno.EINVAL, "VERSION: the JSON text is not NUL-terminated")
        text = rest[:-1]
        if b"\0" in text:
            raise VfioUserError(errno.EINVAL, "VERSION: a NUL inside the JSON text")
        try:
            doc = json.loads(text.decode("utf-8")) if text else {}
        except (UnicodeDecodeError, ValueError):
            raise VfioUserError(errno.EINVAL, "VERSION: the JSON text does not parse") from None
        if not isinstance(doc, dict):
            raise VfioUserError(errno.EINVAL, "VERSION: the JSON text is not an object")
        found = doc.get("capabilities", {})
        if not isinstance(found, dict):
            raise VfioUserError(errno.EINVAL, "VERSION: capabilities is not an object")
        caps = found
    for name, low, high in (
        ("max_msg_fds", 0, 1024),
        ("max_data_xfer_size", 1, 1 << 32),
        ("max_dma_maps", 1, 1 << 32),
        ("pgsizes", 1, 1 << 64),
    ):
        if name in caps:
            value = caps[name]
            if type(value) is not int or not low <= value <= high:
                raise VfioUserError(errno.EINVAL, f"VERSION: {name} must be an integer")
    for name in ("twin_socket", "migration"):
        if name in caps and not isinstance(caps[name], dict):
            raise VfioUserError(errno.EINVAL, f"VERSION: {name} must be an object")
    if "write_multiple" in caps and type(caps["write_multiple"]) is not bool:
        raise VfioUserError(errno.EINVAL, "VERSION: write_multiple must be a boolean")
    return Version(major, minor, caps)


def pack_version(major: int, minor: int, capabilities: dict[str, Any]) -> bytes:
    text = json.dumps({"capabilities": capabilities}, separators=(",", ":")).encode()
    return _VERSION.pack(major, minor) + text + b"\0"


# -- DMA -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmaMap:
    argsz: int
    flags: int
    offset: int
    addr: int
    size: int


@dataclass(frozen=True, slots=True)
class DmaUnmap:
    argsz: int
    flags: int
    addr: int
    size: int


def parse_dma_map(payload: bytes) -> DmaMap:
    _need(payload, DMA_MAP_SIZE, "DMA_MAP")
    argsz, flags, offset, addr, size = _DMA_MAP.unpack_from(payload, 0)
    if argsz < DMA_MAP_SIZE:
        raise VfioUserError(errno.EINVAL, f"DMA_MAP: argsz {argsz} < {DMA_MAP_SIZE}")
    if flags & ~(DMA_READ_FLAG | DMA_WRITE_FLAG):
        raise VfioUserError(errno.EINVAL, f"DMA_MAP: unknown flags {flags:#x}")
    if addr + size > 1 << 64:
        raise VfioUserError(errno.EINVAL, "DMA_MAP: addr + size wraps")
    return DmaMap(argsz, flags, offset, addr, size)


def parse_dma_unmap(payload: bytes) -> DmaUnmap:
    _need(payload, DMA_UNMAP_SIZE, "DMA_UNMAP")
    argsz, flags, addr, size = _DMA_UNMAP.unpack_from(payload, 0)
    if argsz < DMA_UNMAP_SIZE:
        raise VfioUserError(errno.EINVAL, f"DMA_UNMAP: argsz {argsz} < {DMA_UNMAP_SIZE}")
    if flags & ~(UNMAP_GET_DIRTY_BITMAP | UNMAP_ALL):
        raise VfioUserError(errno.EINVAL, f"DMA_UNMAP: unknown flags {flags:#x}")
    if flags & UNMAP_ALL and (addr or size):
        raise VfioUserError(errno.EINVAL, "DMA_UNMAP: UNMAP_ALL takes addr 0 and size 0")
    return DmaUnmap(argsz, flags, addr, size)


def pack_dma_unmap(req: DmaUnmap) -> bytes:
    """The reply echoes the request's struct (no dirty bitmap)."""
    return _DMA_UNMAP.pack(DMA_UNMAP_SIZE, req.flags, req.addr, req.size)


@dataclass(frozen=True, slots=True)
class DmaAccess:
    """DMA_READ / DMA_WRITE, which the server sends to the client."""

    address: int
    count: int
    data: bytes = b""


def pack_dma_read(address: int, count: int) -> bytes:
    return _DMA_ACCESS.pack(address, count)


def pack_dma_write(address: int, data: bytes) -> bytes:
    return _DMA_ACCESS.pack(address, len(data)) + data


def parse_dma_access(payload: bytes) -> DmaAccess:
    _need(payload, DMA_ACCESS_SIZE, "DMA access")
    address, count = _DMA_ACCESS.unpack_from(payload, 0)
    return DmaAccess(address, count, payload[DMA_ACCESS_SIZE:])


# -- device, regions, IRQs ------------------------------------------------------------------


def parse_argsz(payload: bytes, size: int, what: str) -> int:
    """The request's ``argsz``: the largest reply payload the client accepts."""
    _need(payload, size, what)
    (argsz,) = struct.unpack_from("<I", payload, 0)
    if argsz < size:
        raise VfioUserError(errno.EINVAL, f"{what}: argsz {argsz} < {size}")
    return int(argsz)


def pack_device_info(flags: int, num_regions: int, num_irqs: int) -> bytes:
    return _DEVICE_INFO.pack(DEVICE_INFO_SIZE, flags, num_regions, num_irqs)


@dataclass(frozen=True, slots=True)
class RegionInfoRequest:
    argsz: int
    index: int


def parse_region_info(payload: bytes) -> RegionInfoRequest:
    argsz = parse_argsz(payload, REGION_INFO_SIZE, "DEVICE_GET_REGION_INFO")
    _, _, index, _, _, _ = _REGION_INFO.unpack_from(payload, 0)
    return RegionInfoRequest(argsz, index)


def pack_region_info(
    argsz: int,
    index: int,
    flags: int,
    size: int,
    offset: int = 0,
    sparse: list[tuple[int, int]] | None = None,
) -> bytes:
    """vfio_region_info, with a sparse-mmap capability after it when ``sparse`` is given. If
    the client's ``argsz`` is too small for the capability, the reply says how much is needed
    (``argsz``) and carries the struct alone, as VFIO does."""
    caps = b""
    if sparse is not None:
        caps = _CAP_HEADER.pack(REGION_INFO_CAP_SPARSE_MMAP, 1, 0) + _SPARSE_HEAD.pack(
            len(sparse), 0
        )
        caps += b"".join(_SPARSE_AREA.pack(off, length) for off, length in sparse)
    needed = REGION_INFO_SIZE + len(caps)
    if caps and argsz >= needed:
        flags |= REGION_INFO_FLAG_CAPS
        return _REGION_INFO.pack(needed, flags, index, REGION_INFO_SIZE, size, offset) + caps
    return _REGION_INFO.pack(needed, flags, index, 0, size, offset)


def parse_sparse_mmap(reply: bytes) -> list[tuple[int, int]]:
    """The areas of a region-info reply's sparse-mmap capability (for clients and tests)."""
    _, flags, _, cap_offset, _, _ = _REGION_INFO.unpack_from(reply, 0)
    if not flags & REGION_INFO_FLAG_CAPS or not cap_offset:
        return []
    cap_id, _, _ = _CAP_HEADER.unpack_from(reply, cap_offset)
    if cap_id != REGION_INFO_CAP_SPARSE_MMAP:
        return []
    count, _ = _SPARSE_HEAD.unpack_from(reply, cap_offset + _CAP_HEADER.size)
    base = cap_offset + _CAP_HEADER.size + _SPARSE_HEAD.size
    return [_SPARSE_AREA.unpack_from(reply, base + i * _SPARSE_AREA.size) for i in range(count)]


@dataclass(frozen=True, slots=True)
class IrqInfoRequest:
    argsz: int
    index: int


def parse_irq_info(payload: bytes) -> IrqInfoRequest:
    argsz = parse_argsz(payload, IRQ_INFO_SIZE, "DEVICE_GET_IRQ_INFO")
    _, _, index, _ = _IRQ_INFO.unpack_from(payload, 0)
    return IrqInfoRequest(argsz, index)


def pack_irq_info(index: int, flags: int, count: int) -> bytes:
    return _IRQ_INFO.pack(IRQ_INFO_SIZE, flags, index, count)


@dataclass(frozen=True, slots=True)
class IrqSet:
    flags: int
    index: int
    start: int
    count: int
    data: bytes

    @property
    def data_type(self) -> int:
        return self.flags & IRQ_SET_DATA_MASK

    @property
    def action(self) -> int:
        return self.flags & IRQ_SET_ACTION_MASK_ALL


def parse_set_irqs(payload: bytes) -> IrqSet:
    """vfio_irq_set: exactly one data type and one action (VFIO's rule); BOOL data is one byte
    per sub-index."""
    _need(payload, IRQ_SET_SIZE, "DEVICE_SET_IRQS")
    argsz, flags, index, start, count = _IRQ_SET.unpack_from(payload, 0)
    if argsz < IRQ_SET_SIZE:
        raise VfioUserError(errno.EINVAL, f"DEVICE_SET_IRQS: argsz {argsz} < {IRQ_SET_SIZE}")
    if flags & ~(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL):
        raise VfioUserError(errno.EINVAL, f"DEVICE_SET_IRQS: unknown flags {flags:#x}")
    data_type = flags & IRQ_SET_DATA_MASK
    action = flags & IRQ_SET_ACTION_MASK_ALL
    if data_type.bit_count() != 1 or action.bit_count() != 1:
        raise VfioUserError(
            errno.EINVAL, "DEVICE_SET_IRQS: exactly one data type and one action, please"
        )
    data = payload[IRQ_SET_SIZE:]
    if data_type == IRQ_SET_DATA_BOOL and len(data) != count:
        raise VfioUserError(errno.EINVAL, "DEVICE_SET_IRQS: BOOL data needs one byte per IRQ")
    if data_type != IRQ_SET_DATA_BOOL and data:
        raise VfioUserError(errno.EINVAL, "DEVICE_SET_IRQS: data only with DATA_BOOL")
    return IrqSet(flags, index, start, count, data)


@dataclass(frozen=True, slots=True)
class RegionAccess:
    offset: int
    region: int
    count: int
    data: bytes = b""


def parse_region_access(payload: bytes, *, write: bool) -> RegionAccess:
    what = "REGION_WRITE" if write else "REGION_READ"
    _need(payload, REGION_ACCESS_SIZE, what)
    offset, region, count = _REGION_ACCESS.unpack_from(payload, 0)
    data = payload[REGION_ACCESS_SIZE:]
    if write and len(data) != count:
        raise VfioUserError(errno.EINVAL, f"{what}: count {count} but {len(data)} data bytes")
    if not write and data:
        raise VfioUserError(errno.EINVAL, f"{what}: a read carries no data")
    return RegionAccess(offset, region, count, data)


def pack_region_access(offset: int, region: int, count: int, data: bytes = b"") -> bytes:
    return _REGION_ACCESS.pack(offset, region, count) + data
