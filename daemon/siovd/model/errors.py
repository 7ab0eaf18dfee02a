"""The exception the domain model raises when it refuses something.

It is :class:`siov_protocol.errors.SiovError`, the one errno exception of every layer: the
server turns it into an error reply with the same errno and message, so the message is
written for the client: it names the object and the rule, never an internal detail.
"""

from __future__ import annotations

from siov_protocol.errors import SiovError

__all__ = ["SiovError"]
