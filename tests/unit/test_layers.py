"""The import direction of ARCHITECTURE.md, checked on the source tree.

- ``siov_protocol`` imports neither ``siovd`` nor ``siov``, and only ``fdpass`` touches a socket;
- ``siov`` (the SDK, siovctl) and ``siov_host`` (siov-run) never import ``siovd``;
- ``siovd.model`` imports nothing above it (no service, no host) and no I/O framework: no trio,
  no sockets, no structlog.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "siov_protocol": ROOT / "protocol" / "siov_protocol",
    "siov": ROOT / "clients" / "siov",
    "siov_host": ROOT / "clients" / "siov_host",
    "siovd.model": ROOT / "daemon" / "siovd" / "model",
}
FORBIDDEN = {
    "siov_protocol": ("siovd", "siov"),
    "siov": ("siovd",),
    "siov_host": ("siovd",),
    "siovd.model": ("siovd.service", "siovd.host", "trio", "structlog", "socket"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violates(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_import_direction(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(PACKAGES[package].rglob("*.py"))
        for module in sorted(imported_modules(path))
        if violates(module, FORBIDDEN[package])
    ]
    assert bad == []


def test_model_uses_no_relative_imports_above_itself() -> None:
    """A relative import could climb out of the model unseen by the check above."""
    climbing = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGES["siovd.model"].rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert climbing == []


def test_protocol_touches_a_socket_only_in_fdpass() -> None:
    """The protocol is sans-IO: only the stateless SCM_RIGHTS helpers may import socket."""
    users = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGES["siov_protocol"].rglob("*.py")
        if any(violates(m, ("socket", "trio")) for m in imported_modules(path))
    )
    assert users == ["protocol/siov_protocol/fdpass.py"]
