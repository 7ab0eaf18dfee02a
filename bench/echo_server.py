"""A raw trio Unix-socket echo server: the baseline for round trips through siovd."""

from __future__ import annotations

import socket
import sys

import trio


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def main(path: str) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    await trio.serve_listeners(echo, [trio.SocketListener(sock)])


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
