"""Who a client is and what it may do: the authentication policy, with no I/O of its own.

Three modes (``[auth] mode``):

``none``
    Every client is an admin. The socket's file permissions are the only gate.
``peercred``
    The kernel tells us the uid and gid of the process that connected (``SO_PEERCRED``, fixed
    at ``connect()``). A client is let in when its uid is listed, or when its primary group or
    one of its supplementary groups (from the user database) is listed; the admin lists grant
    the admin role. Root and the daemon's own user are always admins: they can already read and
    write the daemon's memory, so refusing them would protect nothing.
``key``
    Ed25519 challenge-response. Each connection gets its own random nonce; the client signs
    ``siov_protocol.auth.challenge_message(nonce, public_key)`` and the key must be listed in an
    authorized-keys file. A signature is only good for the connection whose nonce it signed.

Authorized-keys file
--------------------
One key per line, OpenSSH public key format, with optional comma-separated options first::

    # siov authorized keys
    role=admin,name=alice ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... alice@laptop
    ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... ci-runner

Options: ``role=admin`` or ``role=user`` (default ``user``); ``name=NAME`` (or
``name="NAME"``), the identity reported for the key (default: the comment, else the key's
SHA256 fingerprint). Blank lines and ``#`` comments are ignored. Only ``ssh-ed25519`` keys are
accepted; any other key type, unknown option or repeated key is an error naming the line, so a
typo never silently locks someone out or lets someone in.

Failures raise ``SiovError(EACCES)`` (who you are is not allowed) or ``SiovError(EINVAL)`` (the
request is malformed: a key or signature of the wrong size).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_public_key,
)

from siov_protocol.auth import (
    NONCE_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    SSH_KEY_TYPE,
    AuthMode,
    Role,
    challenge_message,
    key_fingerprint,
)
from siovd.model.errors import SiovError

__all__ = [
    "AuthMode",
    "AuthPolicy",
    "AuthorizedKey",
    "AuthorizedKeys",
    "Identity",
    "NssUserDatabase",
    "PeerCredentials",
    "PeercredPolicy",
    "Role",
    "UserDatabase",
    "new_nonce",
    "peer_credentials",
]


# ---- the facts -------------------------------------------------------------------------------


class PeerCredentials(NamedTuple):
    """``struct ucred`` of the peer as of ``connect()``; the pid may since have been reused."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Identity:
    """The outcome of authentication: a name for logs and INFO, and a role."""

    name: str
    role: Role


class _SupportsGetsockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


_UCRED = struct.Struct("3i")


def peer_credentials(sock: _SupportsGetsockopt) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected ``AF_UNIX`` socket (stdlib or trio socket)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def new_nonce() -> bytes:
    """A fresh challenge for one connection (32 bytes from the kernel's CSPRNG)."""
    return os.urandom(NONCE_SIZE)


# ---- peercred --------------------------------------------------------------------------------


class UserDatabase(Protocol):
    """The user and group lookups peercred needs; the default asks NSS (pwd/grp)."""

    def user_name(self, uid: int) -> str | None: ...

    def groups_of(self, uid: int, gid: int) -> set[int]:
        """``gid`` plus the user's primary and supplementary groups."""
        ...

    def uid_of(self, name: str) -> int | None: ...

    def gid_of(self, name: str) -> int | None: ...

    def group_name(self, gid: int) -> str | None: ...


class NssUserDatabase:
    """:class:`UserDatabase` over the system's name service (``/etc/passwd``, sssd, …)."""

    def user_name(self, uid: int) -> str | None:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None

    def groups_of(self, uid: int, gid: int) -> set[int]:
        groups = {gid}
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return groups  # a uid with no passwd entry has only what the kernel told us
        groups.add(entry.pw_gid)
        groups.update(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return groups

    def uid_of(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def gid_of(self, name: str) -> int | None:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None

    def group_name(self, gid: int) -> str | None:
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return None


def _resolve(
    entries: Iterable[str | int], lookup: Callable[[str], int | None], unresolved: list[str]
) -> frozenset[int]:
    """Numeric ids as they are, names through ``lookup``; unknown names go to ``unresolved``."""
    ids = set()
    for entry in entries:
        if isinstance(entry, int):
            ids.add(entry)
        elif entry.isdigit():
            ids.add(int(entry))
        elif (number := lookup(entry)) is not None:
            ids.add(number)
        else:
            unresolved.append(entry)
    return frozenset(ids)


@dataclass(frozen=True)
class PeercredPolicy:
    """Allow-lists of uids and gids; names in the config are resolved once, at load.

    ``unresolved`` lists the names that matched no user or group; they can never match a peer,
    and the daemon should warn about them (a typo, or a group not created yet).
    """

    allowed_users: frozenset[int] = frozenset()
    allowed_groups: frozenset[int] = frozenset()
    admin_users: frozenset[int] = frozenset()
    admin_groups: frozenset[int] = frozenset()
    trusted_uids: frozenset[int] = frozenset({0})  # always admin: root, and the daemon's uid
    unresolved: tuple[str, ...] = ()
    users: UserDatabase = field(default_factory=NssUserDatabase, compare=False)

    @classmethod
    def from_config(
        cls,
        *,
        allowed_users: Iterable[str | int] = (),
        allowed_groups: Iterable[str | int] = (),
        admin_users: Iterable[str | int] = (),
        admin_groups: Iterable[str | int] = (),
        users: UserDatabase | None = None,
        daemon_uid: int | None = None,
    ) -> PeercredPolicy:
        """Build from ``[auth]`` lists of names or numeric ids."""
        db = users if users is not None else NssUserDatabase()
        unresolved: list[str] = []
        own = os.geteuid() if daemon_uid is None else daemon_uid
        return cls(
            allowed_users=_resolve(allowed_users, db.uid_of, unresolved),
            allowed_groups=_resolve(allowed_groups, db.gid_of, unresolved),
            admin_users=_resolve(admin_users, db.uid_of, unresolved),
            admin_groups=_resolve(admin_groups, db.gid_of, unresolved),
            trusted_uids=frozenset({0, own}),
            unresolved=tuple(unresolved),
            users=db,
        )

    def authenticate(self, peer: PeerCredentials) -> Identity:
        """The identity of the connected peer, or ``SiovError(EACCES)`` if it is not allowed."""
        name = self.users.user_name(peer.uid) or f"uid {peer.uid}"
        if peer.uid in self.trusted_uids or peer.uid in self.admin_users:
            return Identity(name, Role.ADMIN)
        groups = self.users.groups_of(peer.uid, peer.gid)
        if groups & self.admin_groups:
            return Identity(name, Role.ADMIN)
        if peer.uid in self.allowed_users or groups & self.allowed_groups:
            return Identity(name, Role.USER)
        group_names = ", ".join(self.users.group_name(g) or str(g) for g in sorted(groups))
        raise SiovError(
            errno.EACCES,
            f"user {name} (uid {peer.uid}) may not use this daemon: the uid is not in"
            f" auth.allowed_users or auth.admin_users, and none of its groups ({group_names})"
            " is in auth.allowed_groups or auth.admin_groups",
        )


# ---- key -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    public_key: bytes  # raw, 32 bytes
    name: str
    role: Role
    fingerprint: str


def _parse_options(text: str, where: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas; a value may be double-quoted."""
    options: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            raise ValueError(f"{where}: option {text[i:]!r} has no '=value'")
        key = text[i:eq]
        i = eq + 1
        if text.startswith('"', i):
            end = text.find('"', i + 1)
            if end < 0:
                raise ValueError(f"{where}: unterminated quote in option {key!r}")
            value = text[i + 1 : end]
            i = end + 1
            if i < len(text) and text[i] != ",":
                raise ValueError(f"{where}: expected ',' after option {key!r}")
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            value = text[i:end]
            i = end
        if key in options:
            raise ValueError(f"{where}: option {key!r} given twice")
        options[key] = value
        i += 1  # skip the comma
    return options


def _split_options(line: str) -> tuple[str, str]:
    """Split ``[options] keytype base64 [comment]``; options may hold quoted spaces.

    As in sshd's authorized_keys: when the first word is a key type there are no options.
    """
    if line.split(None, 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):
        return "", line
    in_quote = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_quote = not in_quote
        elif ch in " \t" and not in_quote:
            return line[:i], line[i:].strip()
    return line, ""


class AuthorizedKeys:
    """The keys allowed to authenticate, indexed by raw public key."""

    def __init__(self, keys: Iterable[AuthorizedKey] = (), source: str = "<memory>") -> None:
        self.source = source
        self._by_raw: dict[bytes, AuthorizedKey] = {}
        self._by_fingerprint: dict[str, AuthorizedKey] = {}
        for key in keys:
            if key.public_key in self._by_raw:
                raise ValueError(f"{source}: key {key.fingerprint} is listed twice")
            self._by_raw[key.public_key] = key
            self._by_fingerprint[key.fingerprint] = key

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuthorizedKeys:
        """Parse an authorized-keys file; ``ValueError`` names the file and line at fault."""
        path = Path(path)
        return cls.parse(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> AuthorizedKeys:
        keys = []
        for lineno, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            keys.append(_parse_key_line(line, f"{source}:{lineno}"))
        return cls(keys, source)

    def __len__(self) -> int:
        return len(self._by_raw)

    def __iter__(self) -> Iterator[AuthorizedKey]:
        return iter(self._by_raw.values())

    def get(self, key: bytes | str) -> AuthorizedKey | None:
        """Look a key up by its raw 32 bytes or its ``SHA256:…`` fingerprint."""
        if isinstance(key, str):
            return self._by_fingerprint.get(key)
        return self._by_raw.get(bytes(key))

    def verify(self, public_key: bytes | str, signature: bytes, nonce: bytes) -> Identity:
        """Check that an authorized key signed this connection's challenge.

        ``public_key`` is the raw key the client sent (or a fingerprint); ``nonce`` is the one
        the daemon gave *this* connection, never a value taken from the client.
        """
        if isinstance(public_key, bytes | bytearray) and len(public_key) != PUBLIC_KEY_SIZE:
            raise SiovError(
                errno.EINVAL,
                f"public_key must be a raw Ed25519 key of {PUBLIC_KEY_SIZE} bytes,"
                f" got {len(public_key)}",
            )
        if len(signature) != SIGNATURE_SIZE:
            raise SiovError(
                errno.EINVAL,
                f"signature must be an Ed25519 signature of {SIGNATURE_SIZE} bytes,"
                f" got {len(signature)}",
            )
        if len(nonce) != NONCE_SIZE:
            raise SiovError(errno.EINVAL, "this connection has no challenge to answer")
        entry = self.get(public_key)
        if entry is None:
            shown = public_key if isinstance(public_key, str) else key_fingerprint(public_key)
            raise SiovError(
                errno.EACCES, f"public key {shown} is not in the authorized keys ({self.source})"
            )
        try:
            Ed25519PublicKey.from_public_bytes(entry.public_key).verify(
                bytes(signature), challenge_message(nonce, entry.public_key)
            )
        except InvalidSignature:
            raise SiovError(
                errno.EACCES,
                f"signature does not verify for key {entry.fingerprint} ({entry.name}): it must"
                " sign the challenge of this connection (siov-auth-v1, nonce, public key)",
            ) from None
        return Identity(entry.name, entry.role)


def _parse_key_line(line: str, where: str) -> AuthorizedKey:
    options_text, rest = _split_options(line)
    options = _parse_options(options_text, where) if options_text else {}
    fields = rest.split(None, 2)
    if len(fields) < 2:
        raise ValueError(f"{where}: expected 'ssh-ed25519 <base64 key> [comment]'")
    key_type, blob = fields[0], fields[1]
    comment = fields[2].strip() if len(fields) == 3 else ""
    if key_type != SSH_KEY_TYPE:
        raise ValueError(f"{where}: key type {key_type!r} is not supported (only {SSH_KEY_TYPE})")
    try:
        loaded = load_ssh_public_key(f"{key_type} {blob}".encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{where}: not a valid {SSH_KEY_TYPE} key ({exc})") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError(f"{where}: not an Ed25519 key")
    raw = loaded.public_bytes(Encoding.Raw, PublicFormat.Raw)
    fingerprint = key_fingerprint(raw)

    role = Role.USER
    name = comment or fingerprint
    for option, value in options.items():
        if option == "role":
            try:
                role = Role(value)
            except ValueError:
                allowed = ", ".join(r.value for r in Role)
                raise ValueError(f"{where}: role={value!r} is not one of {allowed}") from None
        elif option == "name":
            if not value:
                raise ValueError(f"{where}: name= must not be empty")
            name = value
        else:
            raise ValueError(f"{where}: unknown option {option!r} (known: role, name)")
    return AuthorizedKey(raw, name, role, fingerprint)


# ---- the policy the server calls -------------------------------------------------------------


@dataclass(frozen=True)
class AuthPolicy:
    """One of the three modes, ready to judge connections."""

    mode: AuthMode
    peercred: PeercredPolicy | None = None
    keys: AuthorizedKeys | None = None
    users: UserDatabase = field(default_factory=NssUserDatabase, compare=False)

    def __post_init__(self) -> None:
        if self.mode is AuthMode.PEERCRED and self.peercred is None:
            raise ValueError("peercred mode needs a PeercredPolicy")
        if self.mode is AuthMode.KEY and self.keys is None:
            raise ValueError("key mode needs AuthorizedKeys")

    @classmethod
    def from_config(
        cls,
        mode: str,
        *,
        allowed_users: Iterable[str | int] = (),
        allowed_groups: Iterable[str | int] = (),
        admin_users: Iterable[str | int] = (),
        admin_groups: Iterable[str | int] = (),
        authorized_keys: str | os.PathLike[str] | None = None,
        users: UserDatabase | None = None,
    ) -> AuthPolicy:
        """Build from the ``[auth]`` section; ``ValueError``/``OSError`` for a bad one."""
        try:
            auth_mode = AuthMode(mode)
        except ValueError:
            allowed = ", ".join(m.value for m in AuthMode)
            raise ValueError(f"auth.mode: {mode!r} is not one of {allowed}") from None
        db = users if users is not None else NssUserDatabase()
        peercred = keys = None
        if auth_mode is AuthMode.PEERCRED:
            peercred = PeercredPolicy.from_config(
                allowed_users=allowed_users,
                allowed_groups=allowed_groups,
                admin_users=admin_users,
                admin_groups=admin_groups,
                users=db,
            )
        elif auth_mode is AuthMode.KEY:
            if not authorized_keys:
                raise ValueError("auth.authorized_keys: required when auth.mode is 'key'")
            keys = AuthorizedKeys.load(authorized_keys)
        return cls(auth_mode, peercred, keys, db)

    @property
    def needs_nonce(self) -> bool:
        """Whether the VERSION reply must carry a fresh :func:`new_nonce` for this mode."""
        return self.mode is AuthMode.KEY

    def authenticate(
        self,
        peer: PeerCredentials | None,
        *,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
        signature: bytes | None = None,
    ) -> Identity:
        """Judge one AUTH request on a connection whose peer is ``peer``."""
        if self.mode is AuthMode.NONE:
            name = "anonymous"
            if peer is not None:
                name = self.users.user_name(peer.uid) or f"uid {peer.uid}"
            return Identity(name, Role.ADMIN)
        if self.mode is AuthMode.PEERCRED:
            assert self.peercred is not None
            if peer is None:
                raise SiovError(
                    errno.EACCES, "peercred authentication: the peer's credentials are unknown"
                )
            return self.peercred.authenticate(peer)
        assert self.keys is not None
        if public_key is None or signature is None:
            missing = "public_key" if public_key is None else "signature"
            raise SiovError(
                errno.EACCES,
                f"key authentication: AUTH must carry public_key and signature ({missing} is"
                " missing)",
            )
        if nonce is None:
            raise SiovError(errno.EACCES, "key authentication: no challenge was issued")
        return self.keys.verify(public_key, signature, nonce)
