"""Working with translated ranges: the memoryview lists ``DmaSpace.runs()`` returns.

A range that translates comes back as consecutive views (one per physically contiguous run);
these helpers copy, compare, fill and hash across such lists without caring where the pieces
break, and find the translatable tail of a range for descending copies.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Final

from siovd.model.accel import caps
from siovd.model.dma import DmaFault, DmaSpace

CHUNK: Final = 64 << 10  # compare/fill working size: stays below malloc's mmap threshold
#: The most one step of a transfer touches before the executor checks its work budget: a
#: 2 GiB copy runs as 2048 slices, each translated and moved on its own.
SLICE: Final = 1 << 20


def total(views: Sequence[memoryview]) -> int:
    return sum(map(len, views))


def split_pairs(
    first: Sequence[memoryview], second: Sequence[memoryview], length: int
) -> list[tuple[memoryview, memoryview]]:
    """Cut two view lists at each other's boundaries into equal-length pairs covering
    ``length`` bytes."""
    out: list[tuple[memoryview, memoryview]] = []
    i = j = off_i = off_j = 0
    while length > 0:
        a = first[i]
        b = second[j]
        step = min(len(a) - off_i, len(b) - off_j, length)
        out.append((a[off_i : off_i + step], b[off_j : off_j + step]))
        off_i += step
        off_j += step
        length -= step
        if off_i == len(a):
            i += 1
            off_i = 0
        if off_j == len(b):
            j += 1
            off_j = 0
    return out


def copy_views(
    dst: Sequence[memoryview], src: Sequence[memoryview], length: int, backward: bool = False
) -> None:
    """Copy ``length`` bytes; ``backward`` copies the pieces last to first, which with each
    piece's memmove makes an overlapping copy to a higher address correct."""
    if len(dst) == 1 and len(src) == 1:
        d = dst[0]
        s = src[0]
        if len(d) == length and len(s) == length:
            d[:] = s
        else:
            d[:length] = s[:length]
        return
    pairs = split_pairs(dst, src, length)
    if backward:
        pairs.reverse()
    for d, s in pairs:
        d[:] = s


def chunks(views: Iterable[memoryview], length: int) -> Iterable[memoryview]:
    """The first ``length`` bytes of ``views``."""
    for view in views:
        if length <= 0:
            return
        if len(view) > length:
            view = view[:length]
        yield view
        length -= len(view)


def gather(views: Sequence[memoryview], length: int) -> bytes:
    """The first ``length`` bytes of ``views`` as one bytes object (copied once)."""
    return b"".join(chunks(views, length))


def diff_index(a: bytes, b: bytes) -> int:
    x = int.from_bytes(a, "little") ^ int.from_bytes(b, "little")
    return ((x & -x).bit_length() - 1) // 8


def first_diff(first: Sequence[memoryview], second: Sequence[memoryview], length: int) -> int:
    """Offset of the first byte where the two ranges differ, or -1."""
    offset = 0
    for a, b in split_pairs(first, second, length):
        for start in range(0, len(a), CHUNK):
            x = bytes(a[start : start + CHUNK])
            y = bytes(b[start : start + CHUNK])
            if x != y:
                return offset + start + diff_index(x, y)
        offset += len(a)
    return -1


def pattern_block(pattern: bytes, phase: int, length: int) -> bytes:
    """``pattern`` repeated from byte ``phase`` on, at least ``min(length, CHUNK)`` long and a
    whole number of patterns."""
    rotated = pattern[phase:] + pattern[:phase]
    count = -(-min(length, CHUNK) // len(pattern))
    return rotated * count


def fill_pattern(views: Iterable[memoryview], pattern: bytes, offset: int) -> None:
    """Write ``pattern`` (repeated, byte i = pattern[i mod len]) starting at transfer offset
    ``offset`` into ``views``."""
    size = len(pattern)
    for view in views:
        length = len(view)
        block = pattern_block(pattern, offset % size, length)
        step = len(block)
        for start in range(0, length, step):
            end = min(start + step, length)
            view[start:end] = block[: end - start]
        offset += length


def pattern_diff(views: Iterable[memoryview], pattern: bytes, offset: int) -> int:
    """Offset (relative to ``offset``) of the first byte that differs from the repeated
    pattern, or -1."""
    size = len(pattern)
    seen = 0
    for view in views:
        length = len(view)
        block = pattern_block(pattern, (offset + seen) % size, length)
        step = len(block)
        for start in range(0, length, step):
            data = bytes(view[start : start + step])
            expect = block[: len(data)]
            if data != expect:
                return seen + start + diff_index(data, expect)
        seen += length
    return -1


def overlaps(a: int, a_len: int, b: int, b_len: int) -> bool:
    return a_len > 0 and b_len > 0 and a < b + b_len and b < a + a_len


class Window:
    """Random access into a translated range, for apply-delta's scattered 8-byte writes."""

    __slots__ = ("limit", "starts", "views")

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.starts: list[int] = []
        position = 0
        for view in views:
            self.starts.append(position)
            position += len(view)
        self.limit = position  # bytes that translated

    def write(self, offset: int, data: bytes) -> None:
        index = bisect_right(self.starts, offset) - 1
        pos = 0
        while pos < len(data):
            view = self.views[index]
            local = offset + pos - self.starts[index]
            step = min(len(view) - local, len(data) - pos)
            view[local : local + step] = data[pos : pos + step]
            pos += step
            index += 1


def last_hole(dma: DmaSpace, base: int, length: int, write: bool) -> tuple[int, DmaFault | None]:
    """For a descending copy: where the translatable tail of ``[base, base+length)`` starts,
    and the fault of the highest untranslatable page below it (None if all translates).

    The walk goes down from the end a page at a time and stops at the first hole, as the copy
    itself does: its cost is the tail's pages, never the range's (a 2 GiB range whose top is
    unmapped costs one translation, and reports one fault)."""
    tail = length
    while tail > 0:
        page = max(((base + tail - 1) // caps.PAGE_SIZE) * caps.PAGE_SIZE - base, 0)
        _, fault = dma.runs(base + page, tail - page, write)
        if fault is not None:
            return tail, fault
        tail = page
    return 0, None
