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
import re
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import pytest

import siov
from tests.daemonproc import logged_siovd, settle
from tests.guest.conftest import REPORT

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("SIOV_GUEST_CACHE", "/var/cache/siov-guest"))
COPIES = int(os.environ.get("SIOV_GUEST_COPIES", "2000"))
RESULT_FILE = CACHE / "last-result.json"


def _wanted() -> str | None:
    """None when the test should run, else why it skips."""
    if os.environ.get("CI") == "true" or os.environ.get("SIOV_GUEST_TEST") == "1":
        return None
    if any(CACHE.glob("boot-*/initrd.img")):
        return None
    return (
        "guest test: set SIOV_GUEST_TEST=1 (or CI=true) to build the QEMU/kernel chroot "
        f"(~1.5 min, root, Debian archive) under {CACHE}"
    )


def build() -> Path:
    done = subprocess.run(
        ["bash", str(HERE / "build.sh")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"guest build failed:\n{done.stderr[-4000:]}"
    return Path(done.stdout.strip().splitlines()[-1])


def qemu_argv(boot: Path, socket_path: str, *, viommu: bool, copies: int) -> list[str]:
    """QEMU from the chroot, run through the chroot's own dynamic loader (no chroot, no
    mounts): TCG, a memfd for guest RAM (QEMU passes it with DMA_MAP), the mdev as
    vfio-user-pci, and optionally intel-iommu in front of it."""
    root = boot / "root"
    libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
    append = f"console=ttyS0 panic=-1 loglevel=7 siov.copies={copies}"
    argv = [f"{root}/lib64/ld-linux-x86-64.so.2", "--library-path", libs]
    argv += [f"{root}/usr/bin/qemu-system-x86_64", "-L", f"{root}/usr/share/qemu"]
    argv += ["-L", f"{root}/usr/share/seabios", "-accel", "tcg"]
    # TCG lacks MOVDIR64B: advertise it anyway; siov_movdir64b handles the #UD in the guest
    argv += ["-cpu", "max,+movdir64b,x-force-features=on", "-smp", "2"]
    argv += ["-machine", "q35,memory-backend=mem", "-m", "512M"]
    argv += ["-object", "memory-backend-memfd,id=mem,size=512M,share=on"]
    argv += ["-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot"]
    argv += ["-kernel", str(boot / "vmlinuz"), "-initrd", str(boot / "initrd.img")]
    if viommu:
        argv += ["-device", "intel-iommu,intremap=off,caching-mode=on"]
        append += " intel_iommu=on iommu.strict=1"
    argv += ["-append", append]
    device = {"driver": "vfio-user-pci", "socket": {"path": socket_path, "type": "unix"}}
    argv += ["-device", json.dumps(device)]
    return argv


RESULT_RE = re.compile(
    r"siov_dmacheck: RESULT copies=(\d+) verified=(\d+) failed=(\d+) size=(\d+) ns=(\d+)"
)


@pytest.mark.slow
@pytest.mark.parametrize("viommu", [False, True], ids=["no-viommu", "intel-iommu-strict"])
def test_guest_idxd_drives_siov_mdev(viommu: bool) -> None:
    reason = _wanted()
    if reason is not None:
        pytest.skip(reason)
    assert os.geteuid() == 0, "the guest test runs as root (CI does)"
    boot = build()
    with logged_siovd() as daemon, siov.BlockingClient(daemon.path) as client:
        mdev = client.create_mdev("dsa0", "dsa-1dwq", str(uuidlib.uuid4()))
        sock = os.path.join(daemon.dir, "dsa.sock")
        served = client.vfio_user_expose(mdev["uuid"], sock)
        assert served["path"] == sock
        started = time.monotonic()
        run = subprocess.run(
            qemu_argv(boot, sock, viommu=viommu, copies=COPIES),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=600,
        )
        wall = time.monotonic() - started
        console = run.stdout

        def endpoint() -> dict[str, int]:
            return dict(client.stats()["vfio_user"][mdev["uuid"]])

        # QEMU is gone: the endpoint unmaps all its DMA once it sees the hang-up
        settle(lambda: endpoint()["maps"] == 0, "the client's DMA unmapped after it left")
        stats = endpoint()
        assert daemon.alive() and not daemon.failures_logged()
    tail = console[-3000:] + run.stderr[-2000:]
    assert "Intel(R) Accelerator Device (v100)" in console, tail
    assert "siov-guest: dsa0 state=enabled wq0.0 state=enabled" in console, tail
    found = RESULT_RE.search(console)
    assert found is not None, tail
    copies, verified, failed, size, ns = map(int, found.groups())
    assert (copies, verified, failed, size) == (COPIES, COPIES, 0, 4096), found.group(0)
    # every copy was one descriptor through siov's WQ, each with its completion interrupt
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
        f"QEMU run {wall:.1f} s"
    )
    if not viommu:
        CACHE.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(
            json.dumps({"guest_copies_per_s": rate, "copies": copies, "size": size, "ns": ns})
        )
