"""Run by test_service_systemd.py as a socket-activated process; reports what it was given.

Prints one JSON object: the (fd, name) pairs listen_fds() returned, whether each fd is still
inheritable, which LISTEN_* variables remain, and what stream_listener() made of each fd. It
greets one client on the stream listener, proving it holds the socket the parent bound.
"""

from __future__ import annotations

import json
import os

from siovd.host.systemd import ActivationError, listen_fds, stream_listener

try:
    fds = listen_fds()
except ActivationError as exc:
    print(json.dumps({"error": str(exc), "env_left": sorted(os.environ.keys() & {"LISTEN_PID"})}))
    raise SystemExit(0) from None
report: dict[str, object] = {
    "pid": os.getpid(),
    "fds": [[entry.fd, entry.name] for entry in fds],
    "inheritable": [os.get_inheritable(entry.fd) for entry in fds],
    "env_left": sorted(
        v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if v in os.environ
    ),
    "listeners": {},
}
listeners: dict[str, str] = {}
for entry in fds:
    try:
        sock = stream_listener(entry.fd)
    except ActivationError as exc:
        listeners[entry.name] = f"refused: {exc}"
        continue
    conn, _ = sock.accept()
    with conn:
        conn.sendall(f"hello from {entry.name}".encode())
    listeners[entry.name] = "served"
report["listeners"] = listeners
print(json.dumps(report), flush=True)
