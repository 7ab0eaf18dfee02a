"""SPEC §6.1: the feature table and what a session without a feature is sent."""

from __future__ import annotations

import errno

from siov_protocol import Command
from siov_protocol.features import (
    COMMAND_FEATURE,
    EVENT_FEATURE,
    FEATURES,
    command_refusal,
    negotiate,
)
from siovd.service.session import Session


def test_negotiate() -> None:
    assert negotiate(None) == list(FEATURES)
    assert negotiate([]) == []
    assert negotiate(["dsa", "nope", "events", "dsa"]) == ["events", "dsa"]


def test_every_gated_name_is_a_feature_and_refusals_name_it() -> None:
    assert set(COMMAND_FEATURE.values()) | set(EVENT_FEATURE.values()) <= set(FEATURES)
    err, message = command_refusal(Command.SUBMIT, ["dma"], "SUBMIT") or (0, "")
    assert err == errno.EOPNOTSUPP and "'dsa'" in message
    assert command_refusal(Command.SUBMIT, ["dsa"], "SUBMIT") is None
    assert command_refusal(Command.PING, [], "PING") is None


def test_events_of_a_feature_not_negotiated_are_not_queued() -> None:
    session = Session(features=frozenset({"events", "fd-memory"}))
    assert session.push_event(Command.EVENT_FAULT, {"iova": 0})
    assert not session.push_event(Command.EVENT_IRQ, {"vector": 1})
    assert not session.push_event(Command.EVENT_PAGE_REQUEST, {"request": 1})
    assert [e.command for e in session.events] == [Command.EVENT_FAULT]
    assert (session.events_suppressed, session.events_dropped) == (2, 0)
    quiet = Session(features=frozenset({"dsa"}))
    assert not quiet.push_event(Command.EVENT_SHUTDOWN, {"grace_s": 1.0})
    assert not quiet.events and quiet.events_suppressed == 1
