"""Figures of the foundation: PING round trip against a raw socket echo."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import trio

import siov
from siov_protocol import Command
from siov_protocol.header import HEADER, HEADER_SIZE

from .common import Figure, daemon, figure, median_of

ROUND_TRIPS = 2000
RUNS = 7


def _ping_rtt(path: str) -> float:
    async def run() -> float:
        async with siov.connect(path) as client:
            for _ in range(200):
                await client.ping()
            t0 = time.perf_counter()
            for _ in range(ROUND_TRIPS):
                await client.ping()
            return (time.perf_counter() - t0) / ROUND_TRIPS

    return trio.run(run)


def _echo_rtt(path: str, size: int) -> float:
    async def run() -> float:
        stream = await trio.open_unix_socket(path)
        payload = b"\0" * size
        async with stream:

            async def round_trip() -> None:
                await stream.send_all(payload)
                got = 0
                while got < size:
                    got += len(await stream.receive_some(65536))

            for _ in range(200):
                await round_trip()
            t0 = time.perf_counter()
            for _ in range(ROUND_TRIPS):
                await round_trip()
            return (time.perf_counter() - t0) / ROUND_TRIPS

    return trio.run(run)


def ping_rtt_ratio() -> Figure:
    # the bytes of one bodiless PING (a Connection would refuse it before VERSION)
    ping_frame = HEADER.pack(1, Command.PING, HEADER_SIZE, 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        echo_path = os.path.join(tmp, "echo.sock")
        server = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "echo_server.py"), echo_path]
        )
        try:
            while not os.path.exists(echo_path):
                time.sleep(0.01)
            with daemon() as path:
                pairs = []
                for _ in range(RUNS):  # interleave so both see the same machine noise
                    pairs.append((_ping_rtt(path), _echo_rtt(echo_path, len(ping_frame))))
        finally:
            server.terminate()
            server.wait(5)
    ping = sorted(p for p, _ in pairs)[RUNS // 2]
    echo = sorted(e for _, e in pairs)[RUNS // 2]
    return figure(
        "ping_rtt_ratio",
        round(ping / echo, 3),
        "ratio",
        round(echo * 1e6, 2),
        "<= 1.3",
        f"PING {ping * 1e6:.1f} us vs raw echo {echo * 1e6:.1f} us (the baseline, in us); "
        f"medians of {RUNS} interleaved runs",
    )


FIGURES: dict[str, Callable[[], Figure]] = {"ping_rtt_ratio": ping_rtt_ratio}
__all__ = ["FIGURES", "median_of"]
