"""What both ends of key authentication must agree on, byte for byte.

The daemon gives each connection a fresh random nonce; the client proves it holds an
authorized Ed25519 key by signing :func:`challenge_message` of that nonce. The message starts
with a fixed context string so a siov signature can never be mistaken for a signature made for
another purpose with the same key (an SSH login, a git commit), and it carries the public key
the client claims, so the signature commits to the identity being asserted.

Nothing here touches a socket or a key file: the daemon (``siovd.host.auth``) and the client
(``siov.keys``) both build the message with this module.
"""

from __future__ import annotations

import base64
import enum
import errno
import hashlib
import struct

from .errors import FieldError

#: Prefix of every signed challenge; the version names this message layout.
AUTH_CONTEXT = b"siov-auth-v1\0"
NONCE_SIZE = 32
PUBLIC_KEY_SIZE = 32  # raw Ed25519 public key
SIGNATURE_SIZE = 64  # Ed25519 signature
SSH_KEY_TYPE = "ssh-ed25519"


class AuthMode(enum.StrEnum):
    """What AUTH must prove after VERSION (the ``auth`` field of the VERSION reply)."""

    NONE = "none"  # nothing: every client is an admin (socket permissions are the only gate)
    PEERCRED = "peercred"  # the uid/gid the kernel reports for the connecting process
    KEY = "key"  # an Ed25519 signature of the connection's nonce by an authorized key


class Role(enum.StrEnum):
    """What an authenticated client may do: an admin sees and manages everyone's objects."""

    USER = "user"
    ADMIN = "admin"


def challenge_message(nonce: bytes, public_key: bytes) -> bytes:
    """The bytes a client signs: ``AUTH_CONTEXT || nonce (32) || public_key (32)``."""
    if len(nonce) != NONCE_SIZE:
        raise FieldError(errno.EINVAL, "nonce", f"must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise FieldError(
            errno.EINVAL,
            "public_key",
            f"must be a raw Ed25519 key of {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}",
        )
    return AUTH_CONTEXT + bytes(nonce) + bytes(public_key)


def ssh_public_key_blob(public_key: bytes) -> bytes:
    """The SSH wire encoding of a raw Ed25519 key (RFC 8709): string type, string key."""

    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    return string(SSH_KEY_TYPE.encode()) + string(bytes(public_key))


def key_fingerprint(public_key: bytes) -> str:
    """``SHA256:<base64>`` of the key, the form ``ssh-keygen -l`` prints."""
    digest = hashlib.sha256(ssh_public_key_blob(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
