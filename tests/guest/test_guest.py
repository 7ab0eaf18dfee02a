"""A Linux guest's own idxd driver drives an siov mdev over vfio-user (issue 13).

``tests/guest/build.sh`` builds (and caches) a Debian trixie chroot with QEMU >= 10.1 from
trixie-backports, the Debian kernel, siov's two guest modules and a busybox initramfs. The test
starts siovd, creates a ``dsa-1dwq`` mdev, exposes it over vfio-user, and boots QEMU (TCG) with
``vfio-user-pci`` on that socket, once as is and once behind QEMU's intel-iommu in strict mode.
The guest's init script configures the device through idxd's sysfs, enables a dedicated kernel
WQ bound to dmaengine, and runs ``siov_dmacheck``: the verdict is read from the serial console.

It needs root (debootstrap, chroot) and the Debian archive; it runs under CI=true, or with
SIOV_GUEST_TEST=1, or whenever the build is already cached, and skips otherwise.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.guest import runner
from tests.guest.conftest import REPORT

COPIES = int(os.environ.get("SIOV_GUEST_COPIES", "2000"))


def _skip_reason() -> str | None:
    if os.environ.get("CI") == "true" or os.environ.get("SIOV_GUEST_TEST") == "1":
        return None
    if runner.cached():
        return None
    return (
        "guest test: set SIOV_GUEST_TEST=1 (or CI=true) to build the QEMU/kernel chroot "
        f"(~1.5 min, root, Debian archive) under {runner.CACHE}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("viommu", [False, True], ids=["no-viommu", "intel-iommu-strict"])
def test_guest_idxd_drives_siov_mdev(viommu: bool) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    assert os.geteuid() == 0, "the guest test runs as root (CI does)"
    run = runner.run_guest(runner.build(), viommu=viommu, copies=COPIES)
    assert run.daemon_healthy
    console, stats = run.console, run.stats
    assert "idxd 0000:00:01.0: Intel(R) Accelerator Device (v100)" in console, run.tail()
    assert "siov-guest: dsa0 state=enabled wq0.0 state=enabled" in console, run.tail()
    result = run.result()
    assert result is not None, run.tail()
    copies, verified, failed, size, ns = result
    assert (copies, verified, failed, size) == (COPIES, COPIES, 0, 4096), result
    # every copy was one descriptor through siov's WQ; none was lost at the portal
    assert stats["device_descriptors"] == COPIES
    assert stats["portal_dropped"] == 0 and stats["wq_dropped"] == 0
    if viommu:
        # strict mode: each copy maps and unmaps its two buffers, and QEMU forwards each
        # change: siov's IOMMU saw every one of them
        assert stats["dma_maps"] >= 2 * COPIES and stats["dma_unmaps"] >= 2 * COPIES, stats
    rate = COPIES / (ns / 1e9)
    mode = "intel-iommu strict" if viommu else "no vIOMMU"
    REPORT.append(
        f"{mode}: {verified}/{copies} verified 4 KiB copies, {rate:.0f} copies/s guest-measured "
        f"(TCG), DMA_MAP {stats['dma_maps']} / DMA_UNMAP {stats['dma_unmaps']}, "
        f"QEMU run {run.wall_s:.1f} s"
    )
    if not viommu:
        runner.CACHE.mkdir(parents=True, exist_ok=True)
        runner.RESULT_FILE.write_text(
            json.dumps({"guest_copies_per_s": rate, "copies": copies, "size": size, "ns": ns})
        )
