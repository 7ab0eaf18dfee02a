"""Shared pieces of the benchmarks: figure records, medians, a daemon in a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

Figure = dict[str, Any]


def figure(
    name: str,
    value: float,
    unit: str,
    baseline: float | None,
    target: str | None,
    note: str = "",
) -> Figure:
    """One result. ``target`` reads like ``"<= 2.0"`` or ``">= 0.9"``; ``ok`` says if it is met."""
    ok: bool | None = None
    if target:
        op, _, bound = target.partition(" ")
        limit = float(bound)
        ok = value <= limit if op == "<=" else value >= limit
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "target": target,
        "ok": ok,
        "note": note,
    }


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


@contextlib.contextmanager
def daemon(extra_args: tuple[str, ...] = (), config: str | None = None) -> Iterator[str]:
    """A real ``siovd`` subprocess on a temporary socket; yields the socket path."""
    with tempfile.TemporaryDirectory(prefix="siov-bench-") as tmp:
        path = os.path.join(tmp, "siovd.sock")
        args = [sys.executable, "-m", "siovd", "--socket", path, "--log-level", "warning"]
        args += ["--state-dir", os.path.join(tmp, "state")]
        if config is not None:
            cfg = os.path.join(tmp, "siovd.toml")
            with open(cfg, "w") as fh:
                fh.write(config)
            args += ["--config", cfg]
        proc = subprocess.Popen([*args, *extra_args], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not _accepts(path):  # the socket file appears at bind(), before listen()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("siovd did not start")
                time.sleep(0.02)
            yield path
        finally:
            proc.terminate()
            proc.wait(10)
