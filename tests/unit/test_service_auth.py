"""siovd.host.auth: peercred allow-lists, Ed25519 challenge-response, authorized-keys parsing."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from siov.keys import public_key_line, public_key_raw, sign_challenge
from siov_protocol.auth import AUTH_CONTEXT, challenge_message, key_fingerprint
from siovd.host.auth import (
    AuthMode,
    AuthorizedKeys,
    AuthPolicy,
    Identity,
    NssUserDatabase,
    PeerCredentials,
    PeercredPolicy,
    Role,
    new_nonce,
    peer_credentials,
)
from siovd.model.errors import SiovError

# ---- a user database with known members ------------------------------------------------------


@dataclass
class FakeUsers:
    """uid → (name, primary gid, supplementary gids); gid → name."""

    users: dict[int, tuple[str, int, set[int]]] = field(
        default_factory=lambda: {
            0: ("root", 0, set()),
            1000: ("alice", 1000, {2000}),  # alice is in siov
            1001: ("bob", 1001, set()),
            1002: ("carol", 1002, {3000}),  # carol is in wheel
            998: ("siovd", 2000, set()),
        }
    )
    groups: dict[int, str] = field(
        default_factory=lambda: {
            0: "root",
            1000: "alice",
            1001: "bob",
            1002: "carol",
            2000: "siov",
            3000: "wheel",
        }
    )

    def user_name(self, uid: int) -> str | None:
        return self.users[uid][0] if uid in self.users else None

    def groups_of(self, uid: int, gid: int) -> set[int]:
        if uid not in self.users:
            return {gid}
        _, primary, extra = self.users[uid]
        return {gid, primary, *extra}

    def uid_of(self, name: str) -> int | None:
        return next((uid for uid, u in self.users.items() if u[0] == name), None)

    def gid_of(self, name: str) -> int | None:
        return next((gid for gid, g in self.groups.items() if g == name), None)

    def group_name(self, gid: int) -> str | None:
        return self.groups.get(gid)


def peer(uid: int, gid: int | None = None) -> PeerCredentials:
    return PeerCredentials(pid=4242, uid=uid, gid=uid if gid is None else gid)


def policy(**lists: list[str | int]) -> PeercredPolicy:
    return PeercredPolicy.from_config(users=FakeUsers(), daemon_uid=998, **lists)


def assert_refused(exc: pytest.ExceptionInfo[SiovError], code: int, *words: str) -> None:
    assert exc.value.errno == code
    for word in words:
        assert word in exc.value.message, exc.value.message


# ---- peercred --------------------------------------------------------------------------------


def test_uid_not_allowed() -> None:
    with pytest.raises(SiovError) as exc:
        policy(allowed_groups=["siov"]).authenticate(peer(1001))
    assert_refused(exc, errno.EACCES, "user bob (uid 1001)", "(bob)", "auth.allowed_groups")


def test_unknown_uid_not_allowed() -> None:
    with pytest.raises(SiovError) as exc:
        policy(allowed_groups=["siov"]).authenticate(peer(4000))
    assert_refused(exc, errno.EACCES, "user uid 4000 (uid 4000)")


def test_allowed_by_supplementary_group() -> None:
    assert policy(allowed_groups=["siov"]).authenticate(peer(1000)) == Identity("alice", Role.USER)


def test_allowed_by_the_gid_the_kernel_reports() -> None:
    # bob is not a member of siov in the database, but connected with siov as his gid (sg).
    assert policy(allowed_groups=["siov"]).authenticate(peer(1001, 2000)).role is Role.USER


def test_allowed_by_uid_name_or_number() -> None:
    assert policy(allowed_users=["bob"]).authenticate(peer(1001)) == Identity("bob", Role.USER)
    assert policy(allowed_users=["1001"]).authenticate(peer(1001)).role is Role.USER
    assert policy(allowed_users=[1001]).authenticate(peer(1001)).role is Role.USER


def test_admin_by_user_and_by_group() -> None:
    p = policy(allowed_groups=["siov"], admin_users=["bob"], admin_groups=["wheel"])
    assert p.authenticate(peer(1001)) == Identity("bob", Role.ADMIN)
    assert p.authenticate(peer(1002)) == Identity("carol", Role.ADMIN)
    assert p.authenticate(peer(1000)) == Identity("alice", Role.USER)


def test_root_and_the_daemon_user_are_admins() -> None:
    p = policy()
    assert p.authenticate(peer(0)) == Identity("root", Role.ADMIN)
    assert p.authenticate(peer(998, 2000)) == Identity("siovd", Role.ADMIN)
    with pytest.raises(SiovError):
        p.authenticate(peer(1000))


def test_unknown_names_are_reported() -> None:
    p = policy(allowed_users=["mallory", "alice"], admin_groups=["nogroup-here"])
    assert p.unresolved == ("mallory", "nogroup-here")
    assert p.allowed_users == frozenset({1000})


def test_nss_database_knows_root() -> None:
    db = NssUserDatabase()
    assert db.user_name(0) == "root"
    assert db.uid_of("root") == 0
    assert db.gid_of("root") == 0
    assert db.group_name(0) == "root"
    assert 0 in db.groups_of(0, 0)
    assert db.uid_of("no-such-user-siov") is None
    assert db.groups_of(987654, 987654) == {987654}


def test_peer_credentials_of_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


async def test_peer_credentials_of_a_trio_socket() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_peercred_end_to_end_as_another_user() -> None:
    """A forked child drops to nobody and connects; the kernel's creds decide."""
    nobody = NssUserDatabase().uid_of("nobody")
    assert nobody is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("")  # abstract address: no file permissions in the way
        server.listen()
        address = server.getsockname()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(nobody)
                os.setuid(nobody)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(address)
                    client.recv(1)
            finally:
                os._exit(0)
        conn, _ = server.accept()
        with conn:
            creds = peer_credentials(conn)
            conn.send(b"x")
        os.waitpid(pid, 0)
    assert creds.pid == pid
    assert creds.uid == nobody
    allowed = PeercredPolicy.from_config(allowed_users=["nobody"], daemon_uid=0)
    assert allowed.authenticate(creds) == Identity("nobody", Role.USER)
    with pytest.raises(SiovError) as exc:
        PeercredPolicy.from_config(daemon_uid=0).authenticate(creds)
    assert_refused(exc, errno.EACCES, "user nobody")


# ---- keys ------------------------------------------------------------------------------------


@pytest.fixture
def alice() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bob() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(alice: Ed25519PrivateKey, bob: Ed25519PrivateKey) -> AuthorizedKeys:
    text = "\n".join(
        [
            "# siov keys",
            "",
            "role=admin " + public_key_line(alice, "alice@laptop"),
            public_key_line(bob, "bob"),
        ]
    )
    return AuthorizedKeys.parse(text, source="keys")


def test_good_signature(keys: AuthorizedKeys, alice: Ed25519PrivateKey) -> None:
    nonce = new_nonce()
    raw, sig = sign_challenge(alice, nonce)
    assert keys.verify(raw, sig, nonce) == Identity("alice@laptop", Role.ADMIN)


def test_user_role_by_default(keys: AuthorizedKeys, bob: Ed25519PrivateKey) -> None:
    nonce = new_nonce()
    assert keys.verify(*sign_challenge(bob, nonce), nonce) == Identity("bob", Role.USER)


def test_lookup_by_fingerprint(keys: AuthorizedKeys, alice: Ed25519PrivateKey) -> None:
    nonce = new_nonce()
    raw, sig = sign_challenge(alice, nonce)
    assert keys.verify(key_fingerprint(raw), sig, nonce).name == "alice@laptop"


def test_unknown_key(keys: AuthorizedKeys) -> None:
    stranger = Ed25519PrivateKey.generate()
    nonce = new_nonce()
    raw, sig = sign_challenge(stranger, nonce)
    with pytest.raises(SiovError) as exc:
        keys.verify(raw, sig, nonce)
    assert_refused(exc, errno.EACCES, key_fingerprint(raw), "not in the authorized keys (keys)")


def test_bad_signature(keys: AuthorizedKeys, alice: Ed25519PrivateKey) -> None:
    nonce = new_nonce()
    raw, sig = sign_challenge(alice, nonce)
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SiovError) as exc:
        keys.verify(raw, forged, nonce)
    assert_refused(exc, errno.EACCES, "signature does not verify", "(alice@laptop)")


def test_wrong_key_claims_an_authorized_identity(
    keys: AuthorizedKeys, alice: Ed25519PrivateKey
) -> None:
    mallory = Ed25519PrivateKey.generate()
    nonce = new_nonce()
    alice_raw = public_key_raw(alice)
    sig = mallory.sign(challenge_message(nonce, alice_raw))
    with pytest.raises(SiovError) as exc:
        keys.verify(alice_raw, sig, nonce)
    assert_refused(exc, errno.EACCES, "signature does not verify")


def test_signature_never_verifies_on_another_connection(
    keys: AuthorizedKeys, alice: Ed25519PrivateKey
) -> None:
    first, second = new_nonce(), new_nonce()
    assert first != second
    raw, sig = sign_challenge(alice, first)
    assert keys.verify(raw, sig, first).role is Role.ADMIN
    with pytest.raises(SiovError) as exc:
        keys.verify(raw, sig, second)  # replayed on a connection with another nonce
    assert_refused(exc, errno.EACCES, "must sign the challenge of this connection")


def test_signature_of_the_bare_nonce_is_refused(
    keys: AuthorizedKeys, alice: Ed25519PrivateKey
) -> None:
    """Only the siov context string makes a signature count (no cross-protocol reuse)."""
    nonce = new_nonce()
    raw = public_key_raw(alice)
    for message in (nonce, nonce + raw, AUTH_CONTEXT + nonce):
        with pytest.raises(SiovError) as exc:
            keys.verify(raw, alice.sign(message), nonce)
        assert exc.value.errno == errno.EACCES


@pytest.mark.parametrize(
    ("key_len", "sig_len", "nonce_len", "words"),
    [
        (31, 64, 32, "public_key must be a raw Ed25519 key of 32 bytes, got 31"),
        (32, 63, 32, "signature must be an Ed25519 signature of 64 bytes, got 63"),
        (32, 64, 0, "this connection has no challenge to answer"),
    ],
)
def test_malformed_sizes(
    keys: AuthorizedKeys, key_len: int, sig_len: int, nonce_len: int, words: str
) -> None:
    with pytest.raises(SiovError) as exc:
        keys.verify(bytes(key_len), bytes(sig_len), bytes(nonce_len))
    assert_refused(exc, errno.EINVAL, words)


def test_nonces_are_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 32 for n in nonces)


# ---- authorized-keys file --------------------------------------------------------------------

SEED_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
# Fingerprint of SEED_LINE as printed by OpenSSH's `ssh-keygen -lf` (key from seed 00..1f).
SEED_FINGERPRINT = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"


def test_fingerprint_matches_openssh() -> None:
    keys = AuthorizedKeys.parse(SEED_LINE)
    (entry,) = list(keys)
    assert entry.fingerprint == SEED_FINGERPRINT
    assert entry.name == SEED_FINGERPRINT  # no comment, no name=: the fingerprint
    seed_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert entry.public_key == public_key_raw(seed_key)


def test_options_and_quoted_name() -> None:
    keys = AuthorizedKeys.parse(f'role=user,name="CI runner #3" {SEED_LINE} build@ci')
    (entry,) = list(keys)
    assert (entry.name, entry.role) == ("CI runner #3", Role.USER)
    keys = AuthorizedKeys.parse(f"name=ops,role=admin {SEED_LINE}")
    assert keys.get(SEED_FINGERPRINT) is not None
    assert [(e.name, e.role) for e in keys] == [("ops", Role.ADMIN)]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== rsa", "key type 'ssh-rsa' is not supported"),
        (f"from=10.0.0.1 {SEED_LINE}", "unknown option 'from' (known: role, name)"),
        (f"role=root {SEED_LINE}", "role='root' is not one of user, admin"),
        (f"role=admin,role=user {SEED_LINE}", "option 'role' given twice"),
        (f'name="x {SEED_LINE}', "unterminated quote in option 'name'"),
        (f"name= {SEED_LINE}", "name= must not be empty"),
        (f"no-pty {SEED_LINE}", "option 'no-pty' has no '=value'"),
        ("ssh-ed25519 !!notbase64!!", "not a valid ssh-ed25519 key"),
        ("ssh-ed25519", "expected 'ssh-ed25519 <base64 key> [comment]'"),
    ],
)
def test_bad_lines_name_the_line(line: str, words: str) -> None:
    with pytest.raises(ValueError) as exc:
        AuthorizedKeys.parse(f"# header\n{line}\n", source="/etc/siov/authorized_keys")
    assert str(exc.value).startswith("/etc/siov/authorized_keys:2: ")
    assert words in str(exc.value)


def test_duplicate_key() -> None:
    with pytest.raises(ValueError) as exc:
        AuthorizedKeys.parse(f"{SEED_LINE} a\nrole=admin {SEED_LINE} b\n", source="k")
    assert str(exc.value) == f"k: key {SEED_FINGERPRINT} is listed twice"


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"role=admin {SEED_LINE} seed\n")
    keys = AuthorizedKeys.load(path)
    assert len(keys) == 1
    assert keys.source == str(path)


# ---- the policy the server calls -------------------------------------------------------------


def test_policy_none_makes_everyone_admin() -> None:
    p = AuthPolicy.from_config("none", users=FakeUsers())
    assert not p.needs_nonce
    assert p.authenticate(peer(1001)) == Identity("bob", Role.ADMIN)
    assert p.authenticate(None) == Identity("anonymous", Role.ADMIN)


def test_policy_peercred() -> None:
    p = AuthPolicy.from_config("peercred", allowed_groups=["siov"], users=FakeUsers())
    assert p.mode is AuthMode.PEERCRED
    assert p.authenticate(peer(1000)) == Identity("alice", Role.USER)
    with pytest.raises(SiovError) as exc:
        p.authenticate(peer(1001))
    assert exc.value.errno == errno.EACCES
    with pytest.raises(SiovError) as exc:
        p.authenticate(None)
    assert_refused(exc, errno.EACCES, "credentials are unknown")


def test_policy_key(tmp_path: Path, alice: Ed25519PrivateKey) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text("role=admin " + public_key_line(alice, "alice") + "\n")
    p = AuthPolicy.from_config("key", authorized_keys=path)
    assert p.needs_nonce
    nonce = new_nonce()
    raw, sig = sign_challenge(alice, nonce)
    assert p.authenticate(peer(1001), nonce=nonce, public_key=raw, signature=sig) == Identity(
        "alice", Role.ADMIN
    )
    with pytest.raises(SiovError) as exc:
        p.authenticate(peer(1001), nonce=nonce)  # no key at all
    assert_refused(exc, errno.EACCES, "public_key is missing")
    with pytest.raises(SiovError) as exc:
        p.authenticate(peer(1001), nonce=nonce, public_key=raw)
    assert_refused(exc, errno.EACCES, "signature is missing")
    with pytest.raises(SiovError) as exc:
        p.authenticate(peer(1001), public_key=raw, signature=sig)
    assert_refused(exc, errno.EACCES, "no challenge was issued")


def test_policy_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"auth\.mode: 'pam' is not one of none, peercred, key"):
        AuthPolicy.from_config("pam")
    with pytest.raises(ValueError, match=r"auth\.authorized_keys: required"):
        AuthPolicy.from_config("key")
    with pytest.raises(FileNotFoundError):
        AuthPolicy.from_config("key", authorized_keys=tmp_path / "missing")
