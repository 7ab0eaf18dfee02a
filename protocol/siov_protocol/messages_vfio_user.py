"""Bodies of VFIO_USER_EXPOSE / VFIO_USER_UNEXPOSE: serve an mdev as a real vfio-user device."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import text, u

UUID_LEN = 36


@dataclass(frozen=True, slots=True)
class VfioUserExpose:
    uuid: str = text(UUID_LEN)
    path: str = text(107)  # sun_path
    mode: int = u(0, 0o777, default=0o600)


@dataclass(frozen=True, slots=True)
class VfioUserUnexpose:
    uuid: str = text(UUID_LEN)
