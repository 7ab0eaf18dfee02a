"""Figures of the host view: an unmodified-style DSA program submitting through its WQ portal.

``portal_bench.c`` (built here with cc) does back-to-back 4 KiB MEMMOVEs by MOVDIR64B
(dedicated WQ) or ENQCMD (shared WQ) under ``siov-run``, polling each completion record in its
own memory, with WINDOW descriptors in flight. Each figure is that rate as a ratio to the SDK
SUBMIT path (``desc_4k_per_s``'s loop) measured against the same daemon in the same run.
Needs root, /dev/fuse and pyfuse3 (as siov-run does); otherwise the figure says why.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

import trio

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.accel_figures import _socket_rate
from bench.common import Figure, daemon, figure

RUNS = 3
SECONDS = 0.8
#: descriptors in flight (the embedded default's WQs hold 64 each)
WINDOW = 16
HERE = os.path.dirname(os.path.abspath(__file__))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (siov-run's mount namespace)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "needs pyfuse3"
    return None


@functools.cache
def _program() -> str:
    out = os.path.join(tempfile.mkdtemp(prefix="siov-bench-portal-"), "portal_bench")
    src = os.path.join(HERE, "portal_bench.c")
    subprocess.run(["cc", "-O2", "-Wall", "-o", out, src], check=True)
    return out


def _portal_rate(path: str, wq: str, mode: str) -> float:
    argv = [sys.executable, "-m", "siov_host.run", "--socket", path, "--"]
    argv += [_program(), f"/dev/dsa/{wq}", mode, str(SECONDS), str(WINDOW)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    count, seconds = out.stdout.split()
    return int(count) / float(seconds)


def _portal_figure(name: str, wq: str, mode: str) -> Figure:
    reason = _missing()
    if reason is not None:
        return figure(name, 0.0, "ratio", None, None, f"not measured: {reason}")
    pairs = []
    with daemon() as path:
        for _ in range(RUNS):  # interleaved, so both see the same machine noise
            pairs.append((_portal_rate(path, wq, mode), trio.run(_socket_rate, path, SECONDS)))
    portal = statistics.median(p[0] for p in pairs)
    sdk = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    insn = "MOVDIR64B" if mode == "dedicated" else "ENQCMD (retried while ZF=1)"
    return figure(
        name,
        round(ratio, 4),
        "ratio",
        round(sdk),
        None,
        f"portal {portal:.0f} desc/s ({insn} to {wq}, {WINDOW} in flight, trapped by "
        f"libsiov_portal, completion polled in the process) vs SDK SUBMIT {sdk:.0f} desc/s "
        f"(the baseline); medians of {RUNS} interleaved runs",
    )


def portal_dwq_4k_per_s() -> Figure:
    return _portal_figure("portal_dwq_4k_per_s", "wq0.0", "dedicated")


def portal_swq_4k_per_s() -> Figure:
    return _portal_figure("portal_swq_4k_per_s", "wq0.1", "shared")


FIGURES: dict[str, Callable[[], Figure]] = {
    "portal_dwq_4k_per_s": portal_dwq_4k_per_s,
    "portal_swq_4k_per_s": portal_swq_4k_per_s,
}
