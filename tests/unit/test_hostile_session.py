"""Session bookkeeping that hostile clients lean on: dropped events and what they carried."""

from __future__ import annotations

import os

from siov_protocol import Command
from siovd.host.config import from_dict
from siovd.service.daemon import Daemon
from siovd.service.session import Session


def test_a_dropped_event_closes_its_fds() -> None:
    session = Session(event_limit=1)
    assert session.push_event(Command.EVENT_IRQ, {"n": 1})
    r, w = os.pipe()
    try:
        assert not session.push_event(Command.EVENT_IRQ, {"n": 2}, (w,))
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # the write end is closed: nobody leaks it
    finally:
        os.close(r)
    assert session.events_dropped == 1 and len(session.events) == 1


def test_events_dropped_survives_the_session() -> None:
    daemon = Daemon(from_dict({}), state_dir="")
    try:
        gone, live = Session(event_limit=1), Session(event_limit=1)
        for s in (gone, live):
            daemon.open_session(s)
            for n in range(4):
                s.push_event(Command.EVENT_IRQ, {"n": n})
        assert daemon.stats()["daemon"]["events_dropped"] == 6
        daemon.release(gone)
        assert daemon.stats()["daemon"]["events_dropped"] == 6
    finally:
        daemon.close()
