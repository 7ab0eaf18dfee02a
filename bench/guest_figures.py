"""The guest figure: ``python bench/guest_figures.py``.

- ``guest_copies_per_s``: 4 KiB copies per second as the guest measures them (its
  ``siov_dmacheck`` module times 2000 dmaengine memcpys, each one descriptor through the
  guest's unmodified idxd driver, QEMU's vfio-user-pci and siovd's mdev), under TCG with no
  vIOMMU. It boots a guest (about 10 s) when the guest build is cached and bench runs as root;
  otherwise it reports the last guest test's result, saying so; with neither it reports 0.
  Beside it, ``desc_4k_per_s`` is the SDK's figure for the same descriptors.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Figure, figure
from tests.guest import runner

COPIES = 2000


def guest_copies_per_s() -> Figure:
    if runner.cached() and os.geteuid() == 0:
        run = runner.run_guest(runner.build(), viommu=False, copies=COPIES)
        result = run.result()
        if result is not None and result[1] == COPIES:
            copies, _, _, _, ns = result
            return figure(
                "guest_copies_per_s",
                round(copies / (ns / 1e9)),
                "copies/s",
                None,
                None,
                f"guest-measured, {copies} verified 4 KiB dmaengine memcpys under TCG, "
                f"no vIOMMU; boot and run {run.wall_s:.1f} s",
            )
    if runner.RESULT_FILE.exists():
        last = json.loads(runner.RESULT_FILE.read_text())
        return figure(
            "guest_copies_per_s",
            round(last["guest_copies_per_s"]),
            "copies/s",
            None,
            None,
            f"read from the last guest test run ({runner.RESULT_FILE}), not measured now",
        )
    return figure(
        "guest_copies_per_s",
        0,
        "copies/s",
        None,
        None,
        "no guest build cached: run SIOV_GUEST_TEST=1 pytest tests/guest as root",
    )


FIGURES: dict[str, Callable[[], Figure]] = {"guest_copies_per_s": guest_copies_per_s}


if __name__ == "__main__":
    print(json.dumps(guest_copies_per_s()))
