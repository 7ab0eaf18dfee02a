"""Defines mdevs in a loop until killed; used by test_service_definitions.py.

Usage: service_define_storm.py STATE_DIR. Prints each UUID on its own line only after
``define`` has returned, i.e. once the definition is acknowledged; the parent SIGKILLs this
process at a random moment and checks that every printed UUID survived.
"""

from __future__ import annotations

import sys
import uuid

from siovd.host.definitions import DefinitionStore

store = DefinitionStore(sys.argv[1])
n = 0
while True:
    d = store.define(
        str(uuid.uuid4()),
        f"dsa{n % 3}",
        "dsa-1swq",
        start="auto" if n % 2 else "manual",
        attrs=[{"wq_size": str(n)}, {"priority": "high"}] if n % 5 == 0 else None,
    )
    print(d.uuid, flush=True)
    n += 1
