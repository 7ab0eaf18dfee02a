"""Who owns an object of the model.

Every group, domain, region and device records its owner: the id of the session that created
it (session ids start at 1), or :data:`HOST` for what the daemon itself holds: mdevs started
from persistent definitions that no client has claimed yet, the pools user-managed page tables
come from, the blocking domain.
"""

from __future__ import annotations

from typing import Final

HOST: Final = 0
