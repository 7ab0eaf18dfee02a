"""siov: the Python SDK for siovd (async trio client, blocking client, DSA helpers)."""

from .blocking import BlockingClient
from .buffers import Buffer
from .client import Client, Event, Reply, connect, default_socket_path
from .errors import (
    AlreadyExists,
    Busy,
    ConnectionClosed,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotSupported,
    PermissionDenied,
    ProtocolViolation,
    SiovError,
    TryAgain,
)
from .mdev import Mdev, SubmitResults
from .reconnect import run_with_reconnect, wait_for_daemon

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "BlockingClient",
    "Buffer",
    "Busy",
    "Client",
    "ConnectionClosed",
    "Event",
    "InvalidArgument",
    "Mdev",
    "NoSpace",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "ProtocolViolation",
    "Reply",
    "SiovError",
    "SubmitResults",
    "TryAgain",
    "connect",
    "default_socket_path",
    "run_with_reconnect",
    "wait_for_daemon",
]
