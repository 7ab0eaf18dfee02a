"""siov: the Python SDK for siovd (async trio client, blocking client, DSA helpers)."""

from siov_protocol import Command
from siov_protocol.messages_iommu import DeviceOwnerEvent, FaultEvent, PageRequestEvent
from siov_protocol.replies import IotlbEntry

from .blocking import BlockingClient, BlockingMdev
from .buffers import Buffer
from .client import Client, Event, EventStream, Reply, connect, default_socket_path
from .errors import (
    AlreadyExists,
    Busy,
    ConnectionClosed,
    DescriptorsDropped,
    DmaFault,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotSupported,
    PermissionDenied,
    ProtocolViolation,
    RecordNotWritten,
    SiovError,
    TryAgain,
)
from .mdev import Mdev, SubmitResults
from .reconnect import run_with_reconnect, wait_for_daemon

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "BlockingClient",
    "BlockingMdev",
    "Buffer",
    "Busy",
    "Client",
    "Command",
    "ConnectionClosed",
    "DescriptorsDropped",
    "DeviceOwnerEvent",
    "DmaFault",
    "Event",
    "EventStream",
    "FaultEvent",
    "InvalidArgument",
    "IotlbEntry",
    "Mdev",
    "NoSpace",
    "NotFound",
    "NotSupported",
    "PageRequestEvent",
    "PermissionDenied",
    "ProtocolViolation",
    "RecordNotWritten",
    "Reply",
    "SiovError",
    "SubmitResults",
    "TryAgain",
    "connect",
    "default_socket_path",
    "run_with_reconnect",
    "wait_for_daemon",
]
