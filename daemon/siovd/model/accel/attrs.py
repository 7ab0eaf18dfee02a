"""Parsing of configuration values, shared by devices, groups, engines and WQs.

Values arrive from msgpack or accel-config JSON, so they are ints, bools or strings; anything
else is refused with ``EINVAL`` naming the object and the attribute.
"""

from __future__ import annotations

import errno

from siovd.model.errors import SiovError


def as_int(where: str, attr: str, value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise SiovError(errno.EINVAL, f"{where}: {attr} must be an integer, got {value!r}")


def as_bool(where: str, attr: str, value: object) -> bool:
    number = as_int(where, attr, value)
    if number not in (0, 1):
        raise SiovError(errno.EINVAL, f"{where}: {attr} must be 0 or 1, got {value!r}")
    return bool(number)


def as_str(where: str, attr: str, value: object) -> str:
    if not isinstance(value, str):
        raise SiovError(errno.EINVAL, f"{where}: {attr} must be a string, got {value!r}")
    return value


def as_bitmap256(where: str, attr: str, value: object) -> int:
    """A 256-bit mask: an int, or the kernel's ``%*pb`` text (comma-separated 32-bit hex
    words, most significant first), as sysfs ``op_config`` shows it."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        words = value.strip().split(",")
        try:
            number = 0
            for word in words:
                part = int(word, 16)
                if part >> 32:
                    raise ValueError(word)
                number = (number << 32) | part
        except ValueError:
            raise SiovError(
                errno.EINVAL, f"{where}: {attr} is not a bitmap of 32-bit hex words: {value!r}"
            ) from None
    else:
        raise SiovError(errno.EINVAL, f"{where}: {attr} must be a bitmap, got {value!r}")
    if not 0 <= number < (1 << 256):
        raise SiovError(errno.EINVAL, f"{where}: {attr} must fit in 256 bits")
    return number


def bitmap256_text(number: int) -> str:
    """The kernel's ``%*pb`` rendering of a 256-bit mask."""
    return ",".join(f"{(number >> (32 * i)) & 0xFFFFFFFF:08x}" for i in range(7, -1, -1))


def roundup_pow2(value: int) -> int:
    return 1 << (value - 1).bit_length()
