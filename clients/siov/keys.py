"""Client keys for siovd's key authentication: make one, load one, answer a challenge.

Keys are ordinary OpenSSH Ed25519 keys, so ``ssh-keygen -t ed25519`` makes them too and
``ssh-keygen -lf key.pub`` prints the fingerprint the daemon logs. The public half goes into the
daemon's authorized-keys file (see ``siovd.host.auth``), optionally prefixed with ``role=admin``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
)

from siov_protocol.auth import challenge_message, key_fingerprint

__all__ = [
    "fingerprint",
    "generate_keypair",
    "load_private_key",
    "public_key_line",
    "public_key_raw",
    "sign_challenge",
]


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte public key, as AUTH carries it."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(key: Ed25519PrivateKey) -> str:
    """``SHA256:…``, as ``ssh-keygen -l`` and the daemon's logs show it."""
    return key_fingerprint(public_key_raw(key))


def public_key_line(key: Ed25519PrivateKey, comment: str = "") -> str:
    """``ssh-ed25519 AAAA… comment``, one line of an authorized-keys file."""
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(path: str | os.PathLike[str], comment: str = "") -> Ed25519PrivateKey:
    """Write a new key: OpenSSH private key at ``path`` (mode 0600) and ``path.pub``.

    Refuses (``FileExistsError``) to overwrite either file: a key is an identity, and replacing
    one by accident locks its owner out.
    """
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if public_path.exists():
        raise FileExistsError(f"{public_path} already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    _write_new(private_path, private, 0o600)
    _write_new(public_path, (public_key_line(key, comment) + "\n").encode(), 0o644)
    return key


def load_private_key(
    path: str | os.PathLike[str], password: bytes | None = None
) -> Ed25519PrivateKey:
    """Load an Ed25519 private key in OpenSSH or PEM (PKCS#8) form.

    ``ValueError`` names the file when it is not an Ed25519 private key or the password is
    wrong or missing.
    """
    data = Path(path).read_bytes()
    key: object
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = load_ssh_private_key(data, password)
        else:
            key = load_pem_private_key(data, password)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: cannot load the private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: siovd accepts Ed25519 keys only, this is a {type(key).__name__}")
    return key


def sign_challenge(key: Ed25519PrivateKey, nonce: bytes) -> tuple[bytes, bytes]:
    """Answer the daemon's challenge: ``(public_key_raw, signature)`` for the AUTH request."""
    public = public_key_raw(key)
    return public, key.sign(challenge_message(nonce, public))
