"""siov.keys: the client's key files, and the round trip through the daemon's verifier."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from siov.keys import (
    fingerprint,
    generate_keypair,
    load_private_key,
    public_key_raw,
    sign_challenge,
)
from siovd.host.auth import AuthorizedKeys, Identity, Role, new_nonce


def test_generate_writes_both_halves(tmp_path: Path) -> None:
    path = tmp_path / "id_siov"
    key = generate_keypair(path, comment="alice@laptop")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "id_siov.pub").stat().st_mode) == 0o644
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    line = (tmp_path / "id_siov.pub").read_text()
    assert line.endswith(" alice@laptop\n")
    assert line.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    assert public_key_raw(load_private_key(path)) == public_key_raw(key)


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "id_siov"
    generate_keypair(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(path)
    (tmp_path / "id_siov.pub").unlink()
    with pytest.raises(FileExistsError):
        generate_keypair(path)  # the private half alone is enough to refuse
    assert path.read_bytes() == before


def test_round_trip_through_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "id_siov"
    generate_keypair(path, comment="ci")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("role=admin " + (tmp_path / "id_siov.pub").read_text())
    keys = AuthorizedKeys.load(authorized)

    key = load_private_key(path)
    nonce = new_nonce()
    raw, signature = sign_challenge(key, nonce)
    assert len(raw) == 32
    assert len(signature) == 64
    assert keys.verify(raw, signature, nonce) == Identity("ci", Role.ADMIN)
    assert keys.get(fingerprint(key)) is not None


def test_pem_and_encrypted_keys(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    plain = tmp_path / "plain.pem"
    plain.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    assert public_key_raw(load_private_key(plain)) == public_key_raw(key)

    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    )
    assert public_key_raw(load_private_key(locked, b"pw")) == public_key_raw(key)
    with pytest.raises(ValueError, match=r"locked\.pem: cannot load the private key"):
        load_private_key(locked)
    with pytest.raises(ValueError, match=r"locked\.pem: cannot load the private key"):
        load_private_key(locked, b"wrong")


def test_other_key_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(ValueError, match=r"ec\.pem: siovd accepts Ed25519 keys only"):
        load_private_key(path)
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(ValueError, match="garbage: cannot load the private key"):
        load_private_key(garbage)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH client not installed")
def test_interoperates_with_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "made-by-openssh", "-f", str(path)],
        check=True,
        timeout=60,
    )
    key = load_private_key(path)  # OpenSSH's own private key format
    keys = AuthorizedKeys.load(path.with_name("id_ed25519.pub"))
    nonce = new_nonce()
    assert keys.verify(*sign_challenge(key, nonce), nonce).name == "made-by-openssh"
    ours = tmp_path / "ours"
    generate_keypair(ours)
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(ours)], capture_output=True, text=True, check=True
    ).stdout
    assert fingerprint(load_private_key(ours)) in shown  # OpenSSH reads our private key
