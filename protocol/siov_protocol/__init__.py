"""siov's wire protocol, sans-IO: framing, commands, message schemas, errors, DSA ABI."""

from .commands import Command, is_event
from .connection import (
    DEFAULT_MAX_FDS,
    DEFAULT_MAX_MSG_SIZE,
    NEED_DATA,
    BadMessage,
    Connection,
    Message,
)
from .errors import (
    FieldError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SiovError,
)
from .header import HEADER_SIZE
from .messages import PROTOCOL_MAJOR, PROTOCOL_MINOR
from .schema import decode, encode
from .state import ConnectionState, Limits, Phase, Side, allowed_from

__all__ = [
    "DEFAULT_MAX_FDS",
    "DEFAULT_MAX_MSG_SIZE",
    "HEADER_SIZE",
    "NEED_DATA",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "BadMessage",
    "Command",
    "Connection",
    "ConnectionState",
    "FieldError",
    "Limits",
    "LocalProtocolError",
    "Message",
    "Phase",
    "ProtocolError",
    "RemoteProtocolError",
    "Side",
    "SiovError",
    "allowed_from",
    "decode",
    "encode",
    "is_event",
]
