"""CRC-32C with DSA's seed, inversion and reflection rules.

DSA computes CRC-32C (polynomial 0x1EDC6F41, reflected 0x82F63B78). By default the register
starts at ``~seed``, bytes are processed reflected and the result is ``~register``: with seed 0
that is the standard CRC-32C, and a result is a valid seed for the next chunk (accel-config
``dsa_calculate_crc32``; DML ``crc.cpp``). Two op flags change that: BYPASS_CRC_INV_REF replaces
the inversions by 32-bit bit reversals, BYPASS_DATA_REF feeds each byte MSB-first.

The ``crc32c`` package (hardware accelerated) does the bulk work. Its running value is the
finalised CRC (``crc32c(b, crc32c(a)) == crc32c(a + b)``), so the state kept between chunks here
is that value; :func:`crc_begin` and :func:`crc_end` convert from and to the seed and result
representation the descriptor's flags select. Because ``crc_begin(crc_end(v)) == v`` for every
flag combination, a partial result after a page fault is a seed that continues the computation.
"""

from __future__ import annotations

from collections.abc import Iterable

import crc32c as _crc32c

from siov_protocol.dsa import IDXD_OP_FLAG_BYPASS_CRC_INV_REF, IDXD_OP_FLAG_BYPASS_DATA_REF

_M32 = 0xFFFFFFFF
_BITREV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))

_crc = _crc32c.crc32c


def bitrev32(value: int) -> int:
    return int(f"{value & _M32:032b}"[::-1], 2)


def crc_begin(seed: int, flags: int) -> int:
    """The running value for a computation that starts from ``seed``."""
    if flags & IDXD_OP_FLAG_BYPASS_CRC_INV_REF:
        return ~bitrev32(seed) & _M32
    return seed & _M32


def crc_update(value: int, data: memoryview | bytes, flags: int) -> int:
    if flags & IDXD_OP_FLAG_BYPASS_DATA_REF:
        data = bytes(data).translate(_BITREV8)
    return int(_crc(data, value))


def crc_end(value: int, flags: int) -> int:
    """The ``crc_val`` a completion record reports for the running value."""
    if flags & IDXD_OP_FLAG_BYPASS_CRC_INV_REF:
        return bitrev32(~value & _M32)
    return value


def dsa_crc32c(chunks: Iterable[memoryview | bytes], seed: int = 0, flags: int = 0) -> int:
    """The whole computation over ``chunks`` in order, as CRCGEN reports it."""
    value = crc_begin(seed, flags)
    for chunk in chunks:
        value = crc_update(value, chunk, flags)
    return crc_end(value, flags)
