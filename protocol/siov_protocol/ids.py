"""The widths of the ids both sides must agree on, defined once.

A PASID is 20 bits (PCIe's PASID TLP prefix, VT-d's PASID tables); PASID 0 is the "no PASID"
of requests without one. Devices are named by UUID strings of 36 characters.
"""

from __future__ import annotations

from typing import Final

PASID_BITS: Final = 20
PASID_LIMIT: Final = 1 << PASID_BITS  # one past the largest PASID
PASID_MAX: Final = PASID_LIMIT - 1
NO_PASID: Final = 0
UUID_LEN: Final = 36
