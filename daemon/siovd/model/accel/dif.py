"""The T10 DIF operations: DIF_CHECK 0x12, DIF_INS 0x13, DIF_STRP 0x14, DIF_UPDT 0x15, DIX_GEN 0x17.

Data is protected in blocks of 512, 520, 4096 or 4104 bytes (``dif_flags`` bits 1:0), each
followed (DIF) or accompanied in a separate buffer (DIX) by an 8-byte tuple, big-endian:
guard u16 = CRC-16/T10-DIF of the block (polynomial 0x8BB7, MSB first, register starting at 0,
or 0xFFFF with ``dif_flags`` bit 2, result inverted with bit 3), application tag u16, reference
tag u32 (DML ``sources/core/src/dif_impl/dml_dif.c``; accel-config ``test/dsa.c``
``dsa_calculate_crc_t10dif`` and ``init_dif_*``).

Descriptor fields (``linux/idxd.h``): ``src_dif_flags`` @40, ``dest_dif_flags`` @41,
``dif_flags`` @42, source tags (ref u32 @48, app mask u16 @52, app u16 @54), destination tags
(@56, @60, @62). ``xfer_size`` is always the *source* size: data plus tuples for CHECK, STRP
and UPDT, data only for INS and DIX_GEN. The completion record reports in the same layout the
tags the next block would have used, source tags @16 (CHECK, STRP, UPDT) and destination tags
@24 (INS, UPDT, DIX_GEN), with the masks echoed, so that a descriptor stopped by a page fault
resumes by copying them back (accel-config ``test/dsa_prep.c`` ``dsa_reprep_dif``; DML
``partial_completion.hpp``). ``bytes_completed`` counts source bytes of whole blocks: a block
is done entirely or not at all.

Source flags (DML ``specific_flags.hpp``): bit 0 enable all-F error, 1 all-F detect, 2 app-tag-F
detect, 3 app+ref-tag-F detect, 4 incrementing app tag, 5 guard check disable, 6 ref tag check
disable, 7 fixed ref tag. Destination flags: bits 2:0 reserved, 3 app tag pass-through, 4
incrementing app tag, 5 guard pass-through, 6 ref tag pass-through, 7 fixed ref tag. A check
failure completes with ``DSA_COMP_DIF_ERR`` and the ``dif_status`` bits in the result byte:
0x01 guard, 0x02 app tag, 0x04 ref tag, 0x08 all-F detected (DML ``dmldefs.h``);
``bytes_completed`` is then the offset of the failing block.

Choices where the public sources disagree or are silent:

- Application tag mask: a 1 bit excludes that bit from the comparison, 0xFFFF disables the app
  tag check (SPDK ``lib/idxd/idxd.c`` ``idxd_get_app_tag_mask``, written for the hardware).
  DML's software kernel instead skips the check for mask 0; siov follows SPDK. A generated app
  tag is ``seed & ~mask`` (DML ``dml_legacy_dif_insert``).
- All-F detect (bit 1) without the enable-error bit skips the checks of a block whose tuple is
  all 0xFF; with bit 0 too it is a DIF error with status 0x08.
- Tags advance for every block, checked or skipped (DML).
- The pass-through destination bits have nothing to pass through on INS and DIX_GEN and are
  ignored there.
- ``xfer_size`` not a whole number of source blocks: ``DSA_COMP_XFER_ERANGE``; source and
  destination overlapping: ``DSA_COMP_OVERLAP_BUFFERS`` (DML ``validation.cpp`` rejects both).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from siov_protocol.dsa import (
    DIF_BLOCK_SIZES,
    DIF_DST_APP_TAG_PASS,
    DIF_DST_FIXED_REF_TAG,
    DIF_DST_GUARD_PASS,
    DIF_DST_INC_APP_TAG,
    DIF_DST_REF_TAG_PASS,
    DIF_FLAG_INVERT_CRC_RESULT,
    DIF_FLAG_INVERT_CRC_SEED,
    DIF_SRC_ALL_F_DETECT,
    DIF_SRC_ALL_F_ERROR,
    DIF_SRC_APP_REF_TAG_F_DETECT,
    DIF_SRC_APP_TAG_F_DETECT,
    DIF_SRC_FIXED_REF_TAG,
    DIF_SRC_GUARD_CHECK_DISABLE,
    DIF_SRC_INC_APP_TAG,
    DIF_SRC_REF_TAG_CHECK_DISABLE,
    DIF_STATUS_ALL_F,
    DIF_STATUS_APP_TAG,
    DIF_STATUS_GUARD,
    DIF_STATUS_REF_TAG,
    DsaCompStatus,
    DsaOpcode,
)
from siovd.model.accel.ranges import SLICE, overlaps, total
from siovd.model.accel.results import SUCCESS, Desc, Res, finished, partial, preempted

if TYPE_CHECKING:
    from siovd.model.accel.ops import Executor
    from siovd.model.accel.outcome import AccelEvent
    from siovd.model.accel.wq import WorkItem
    from siovd.model.budget import Budget
    from siovd.model.dma import DmaSpace

TUPLE_SIZE: Final = 8
POLY: Final = 0x8BB7
BLOCK_SIZES: Final = DIF_BLOCK_SIZES
DIF_FLAG_INVERT_SEED: Final = DIF_FLAG_INVERT_CRC_SEED
DIF_FLAG_INVERT_RESULT: Final = DIF_FLAG_INVERT_CRC_RESULT
SRC_ALL_F_ERROR: Final = DIF_SRC_ALL_F_ERROR
SRC_ALL_F_DETECT: Final = DIF_SRC_ALL_F_DETECT
SRC_APP_F_DETECT: Final = DIF_SRC_APP_TAG_F_DETECT
SRC_APP_REF_F_DETECT: Final = DIF_SRC_APP_REF_TAG_F_DETECT
SRC_INC_APP_TAG: Final = DIF_SRC_INC_APP_TAG
SRC_GUARD_CHECK_DISABLE: Final = DIF_SRC_GUARD_CHECK_DISABLE
SRC_REF_CHECK_DISABLE: Final = DIF_SRC_REF_TAG_CHECK_DISABLE
SRC_FIXED_REF_TAG: Final = DIF_SRC_FIXED_REF_TAG
DST_APP_PASS: Final = DIF_DST_APP_TAG_PASS
DST_INC_APP_TAG: Final = DIF_DST_INC_APP_TAG
DST_GUARD_PASS: Final = DIF_DST_GUARD_PASS
DST_REF_PASS: Final = DIF_DST_REF_TAG_PASS
DST_FIXED_REF_TAG: Final = DIF_DST_FIXED_REF_TAG
STATUS_GUARD: Final = DIF_STATUS_GUARD
STATUS_APP: Final = DIF_STATUS_APP_TAG
STATUS_REF: Final = DIF_STATUS_REF_TAG
STATUS_ALL_F: Final = DIF_STATUS_ALL_F

_DIF_ERR: Final = int(DsaCompStatus.DIF_ERR)
_XFER_ERANGE: Final = int(DsaCompStatus.XFER_ERANGE)
_OVERLAP: Final = int(DsaCompStatus.OVERLAP_BUFFERS)
_TUPLE = struct.Struct(">HHI")
_ALL_F: Final = b"\xff" * TUPLE_SIZE
_U32: Final = 0xFFFFFFFF
#: Blocks gathered per step: bounds the memory a huge transfer needs.
_BATCH_BYTES: Final = 256 << 10


def _table8() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_T8: Final = _table8()
_T16: list[int] = []


def _table16() -> list[int]:
    """The register after feeding 16 bits: one lookup per two bytes."""
    if not _T16:
        t8 = _T8
        for hi in range(256):
            first = t8[hi]
            shifted = (first << 8) & 0xFFFF
            top = first >> 8
            _T16.extend(shifted ^ t8[top ^ lo] for lo in range(256))
    return _T16


def crc16_t10(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/T10-DIF of ``data`` continuing from register value ``crc`` (0 for a new one):
    polynomial 0x8BB7, MSB first, no reflection, no final XOR."""
    t16 = _table16()
    length = len(data)
    even = length & ~1
    if even:
        words = array("H", bytes(data[:even]))
        if sys.byteorder == "little":
            words.byteswap()
        for word in words:
            crc = t16[crc ^ word]
    if length & 1:
        crc = ((crc << 8) & 0xFFFF) ^ _T8[(crc >> 8) ^ data[even]]
    return crc


# The CRC of a block by parity masks. CRC with a zero register is linear in the message bits:
# the bit k places from the end (bit k of the message read as one big-endian integer D)
# contributes r_k = x^(k+16) mod P. So bit o of the CRC is the parity of D & Q_o, where Q_o has
# bit k set when bit o of r_k is. Sixteen big-integer ANDs and popcounts replace a loop over
# the bytes; a seed s adds s * x^(8L) mod P. Masks for a shorter block are the longer ones cut.
_FAST_MAX: Final = max(DIF_BLOCK_SIZES)
_MASKS: list[int] = []
_R: list[int] = []


def _masks() -> list[int]:
    if not _MASKS:
        r = POLY  # x^16 mod P
        bits = 8 * _FAST_MAX
        for _ in range(bits):
            _R.append(r)
            r = ((r << 1) ^ POLY) & 0xFFFF if r & 0x8000 else r << 1
        for o in range(16):
            text = "".join("1" if value >> o & 1 else "0" for value in reversed(_R))
            _MASKS.append(int(text, 2))
    return _MASKS


def _seed_term(length: int, seed: int) -> int:
    """``seed * x^(8 * length) mod P``: what a starting register contributes."""
    out = 0
    base = 8 * length - 16
    for j in range(16):
        if seed >> j & 1:
            out ^= _R[base + j]
    return out


_CUT: dict[int, tuple[list[int], int]] = {}


def _crc_by_masks(data: bytes | bytearray | memoryview, seed: int) -> int:
    length = len(data)
    cached = _CUT.get(length)
    if cached is None:
        cut = (1 << (8 * length)) - 1
        cached = ([mask & cut for mask in _masks()], _seed_term(length, 0xFFFF))
        if len(_CUT) < 64:
            _CUT[length] = cached
    masks, ones = cached
    value = int.from_bytes(data, "big")
    crc = 0
    for o in range(16):
        crc |= ((value & masks[o]).bit_count() & 1) << o
    if seed:
        crc ^= ones if seed == 0xFFFF else _seed_term(length, seed)
    return crc


def guard(data: bytes | bytearray | memoryview, dif_flags: int = 0) -> int:
    """The guard tag of one block under ``dif_flags`` (invert seed / invert result)."""
    seed = 0xFFFF if dif_flags & DIF_FLAG_INVERT_SEED else 0
    fast = 2 <= len(data) <= _FAST_MAX  # the masks need 16 bits of message for the seed
    crc = _crc_by_masks(data, seed) if fast else crc16_t10(data, seed)
    return crc ^ 0xFFFF if dif_flags & DIF_FLAG_INVERT_RESULT else crc


def tags_word(ref: int, mask: int, app: int) -> int:
    """8 bytes of ref u32, app mask u16, app u16 as one little-endian u64 (the layout of the
    descriptor's tag fields and of the completion record's)."""
    return (ref & _U32) | (mask & 0xFFFF) << 32 | (app & 0xFFFF) << 48


class _Stream:
    """Sequential reads or writes across a translated range's views."""

    __slots__ = ("index", "offset", "views")

    def __init__(self, views: Sequence[memoryview]) -> None:
        self.views = views
        self.index = 0
        self.offset = 0

    def read(self, length: int) -> bytes:
        view = self.views[self.index]
        end = self.offset + length
        if end <= len(view):
            data = bytes(view[self.offset : end])
            self._advance(end)
            return data
        parts = []
        while length:
            view = self.views[self.index]
            step = min(len(view) - self.offset, length)
            parts.append(bytes(view[self.offset : self.offset + step]))
            length -= step
            self._advance(self.offset + step)
        return b"".join(parts)

    def write(self, data: bytes | bytearray) -> None:
        pos = 0
        length = len(data)
        while pos < length:
            view = self.views[self.index]
            step = min(len(view) - self.offset, length - pos)
            view[self.offset : self.offset + step] = data[pos : pos + step]
            pos += step
            self._advance(self.offset + step)

    def _advance(self, offset: int) -> None:
        if offset == len(self.views[self.index]):
            self.index += 1
            self.offset = 0
        else:
            self.offset = offset


class _Tags:
    """A running (ref, app) pair and how it advances per block."""

    __slots__ = ("app", "inc_app", "inc_ref", "mask", "ref")

    def __init__(self, word: int, inc_app: bool, fixed_ref: bool, done: int) -> None:
        self.mask = (word >> 32) & 0xFFFF
        self.inc_app = 1 if inc_app else 0
        self.inc_ref = 0 if fixed_ref else 1
        self.ref = (word + self.inc_ref * done) & _U32
        self.app = ((word >> 48) + self.inc_app * done) & 0xFFFF

    def step(self) -> None:
        self.ref = (self.ref + self.inc_ref) & _U32
        self.app = (self.app + self.inc_app) & 0xFFFF

    def word(self) -> int:
        return tags_word(self.ref, self.mask, self.app)


def _check(
    block: bytes, size: int, flags: int, dif_flags: int, tags: _Tags
) -> tuple[int, int, int, int, int]:
    """The dif_status of one source block (0 when it passes) and its tuple's fields and
    computed guard (-1 when not computed)."""
    tuple_bytes = block[size:]
    stored_guard, stored_app, stored_ref = _TUPLE.unpack(tuple_bytes)
    if flags & SRC_ALL_F_DETECT and tuple_bytes == _ALL_F:
        status = STATUS_ALL_F if flags & SRC_ALL_F_ERROR else 0
        return status, stored_guard, stored_app, stored_ref, -1
    if stored_app == 0xFFFF and (
        flags & SRC_APP_F_DETECT or (flags & SRC_APP_REF_F_DETECT and stored_ref == _U32)
    ):
        return 0, stored_guard, stored_app, stored_ref, -1
    status = 0
    computed = -1
    if not flags & SRC_GUARD_CHECK_DISABLE:
        computed = guard(block[:size], dif_flags)
        if computed != stored_guard:
            status |= STATUS_GUARD
    if (stored_app ^ tags.app) & ~tags.mask & 0xFFFF:
        status |= STATUS_APP
    if not flags & SRC_REF_CHECK_DISABLE and stored_ref != tags.ref:
        status |= STATUS_REF
    return status, stored_guard, stored_app, stored_ref, computed


def run(dma: DmaSpace, desc: Desc, progress: object, budget: Budget | None = None) -> Res:
    """Execute one DIF-family descriptor; ``progress`` is the number of blocks already done
    (None on the first run). With a ``budget``, it stops between slices once that is spent
    (:func:`~siovd.model.accel.results.preempted`, progress in blocks)."""
    opcode = desc[1] >> 24
    src, dst, size = desc[3], desc[4], desc[5]
    op40 = desc[8]
    src_flags = op40 & 0xFF
    dst_flags = (op40 >> 8) & 0xFF
    dif_flags = (op40 >> 16) & 0xFF
    block = BLOCK_SIZES[dif_flags & 3]
    checks = opcode in (DsaOpcode.DIF_CHECK, DsaOpcode.DIF_STRP, DsaOpcode.DIF_UPDT)
    generates = opcode in (DsaOpcode.DIF_INS, DsaOpcode.DIF_UPDT, DsaOpcode.DIX_GEN)
    src_step = block + TUPLE_SIZE if checks else block
    if opcode == DsaOpcode.DIF_CHECK:
        dst_step = 0
    elif opcode == DsaOpcode.DIF_STRP:
        dst_step = block
    elif opcode == DsaOpcode.DIX_GEN:
        dst_step = TUPLE_SIZE
    else:  # INS and UPDT write data and tuple
        dst_step = block + TUPLE_SIZE
    count = size // src_step
    if progress is None:
        if size % src_step:
            return finished(_XFER_ERANGE)
        if dst_step and overlaps(src, size, dst, count * dst_step):
            return finished(_OVERLAP)
        done = 0
    else:
        assert isinstance(progress, int)
        done = progress
    src_tags = (
        _Tags(desc[9], bool(src_flags & SRC_INC_APP_TAG), bool(src_flags & SRC_FIXED_REF_TAG), done)
        if checks
        else None
    )
    dst_tags = (
        _Tags(
            desc[10], bool(dst_flags & DST_INC_APP_TAG), bool(dst_flags & DST_FIXED_REF_TAG), done
        )
        if generates
        else None
    )

    pass_guard = dst_flags & DST_GUARD_PASS and opcode == DsaOpcode.DIF_UPDT
    pass_app = dst_flags & DST_APP_PASS and opcode == DsaOpcode.DIF_UPDT
    pass_ref = dst_flags & DST_REF_PASS and opcode == DsaOpcode.DIF_UPDT
    per_batch = max(1, _BATCH_BYTES // src_step)
    # Whole blocks, about a slice of source at a time; the budget is charged per slice and,
    # once spent, the descriptor stops at a block boundary (its progress: blocks done).
    per_slice = max(1, SLICE // src_step)
    reached = done
    while reached < count:
        want = min(per_slice, count - reached)
        src_views, src_fault = dma.runs(src + reached * src_step, want * src_step, False)
        available = total(src_views) // src_step
        fault = src_fault
        if dst_step:
            dst_views, dst_fault = dma.runs(dst + reached * dst_step, want * dst_step, True)
            dst_available = total(dst_views) // dst_step
            if dst_available < available:  # a tie goes to the source: it is read first
                available, fault = dst_available, dst_fault
            writer: _Stream | None = _Stream(dst_views)
        else:
            writer = None
        reader = _Stream(src_views)
        index = 0
        while index < available:
            n = min(per_batch, available - index)
            chunk = reader.read(n * src_step)
            out = bytearray() if writer is not None else None
            for k in range(n):
                data = chunk[k * src_step : (k + 1) * src_step]
                computed = -1
                stored = (0, 0, 0)
                if src_tags is not None:
                    status, s_guard, s_app, s_ref, computed = _check(
                        data, block, src_flags, dif_flags, src_tags
                    )
                    if status:
                        if out:
                            assert writer is not None
                            writer.write(out)
                        return _error(status, reached + index + k, src_step, src_tags, dst_tags)
                    stored = (s_guard, s_app, s_ref)
                    src_tags.step()
                if out is None:
                    continue
                if opcode == DsaOpcode.DIF_STRP:
                    out += data[:block]
                    continue
                assert dst_tags is not None
                if pass_guard:
                    new_guard = stored[0]
                elif computed >= 0:
                    new_guard = computed
                else:
                    new_guard = guard(data[:block], dif_flags)
                new_app = stored[1] if pass_app else dst_tags.app & ~dst_tags.mask & 0xFFFF
                new_ref = stored[2] if pass_ref else dst_tags.ref
                if opcode != DsaOpcode.DIX_GEN:
                    out += data[:block]
                out += _TUPLE.pack(new_guard, new_app, new_ref)
                dst_tags.step()
            if out:
                assert writer is not None
                writer.write(out)
            index += n
        reached += available
        if available < want:
            assert fault is not None
            word = _word(src_tags, dst_tags)
            return partial(fault, reached * src_step, reached, word=word)
        if reached < count and budget is not None and budget.charge(want * src_step):
            return preempted(reached)
    return finished(SUCCESS, word=_word(src_tags, dst_tags))


def _word(src_tags: _Tags | None, dst_tags: _Tags | None) -> int:
    """The completion record's bytes 16..31 as one integer: source tags low, destination
    tags high."""
    low = src_tags.word() if src_tags is not None else 0
    high = dst_tags.word() if dst_tags is not None else 0
    return low | high << 64


def _error(status: int, failed: int, src_step: int, src_tags: _Tags, dst_tags: _Tags | None) -> Res:
    return finished(
        _DIF_ERR, result=status, completed=failed * src_step, word=_word(src_tags, dst_tags)
    )


def op_dif(
    executor: Executor,
    item: WorkItem,
    dma: DmaSpace,
    desc: Desc,
    progress: object,
    events: list[AccelEvent],
) -> Res:
    """The executor's entry point for the five DIF opcodes (under the call's work budget)."""
    return run(dma, desc, progress, executor.budget)
