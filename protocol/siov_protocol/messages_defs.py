"""Bodies of the persistent mdev definition commands (mdevctl's define/start/stop/list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ids import UUID_LEN
from .schema import items, text


@dataclass(frozen=True, slots=True)
class MdevDefine:
    """Either ``mdev_type`` (+ ``start``, ``attrs``) or ``config``, mdevctl's single-definition
    JSON (``{"mdev_type", "start", "attrs"}``, what ``list --defined --json -u UUID`` prints)."""

    parent: str | None = text(64, default=None)
    uuid: str | None = text(UUID_LEN, default=None)
    mdev_type: str | None = text(64, default=None)
    start: str = text(8, default="manual")  # auto | manual
    attrs: list[dict[str, Any]] = items(256, default_factory=list)
    config: dict[str, Any] | None = field(default=None)
    #: several at once, mdevctl's list shape ``[{parent: [{uuid: config}]}]``: all or none
    #: (``parent``/``uuid``, when given, pick the entries of that parent/UUID)
    definitions: list[dict[str, Any]] | None = items(64, default_factory=lambda: None)
    #: mdevctl modify: replace the existing definition of ``parent`` + ``uuid``
    replace: bool = False


@dataclass(frozen=True, slots=True)
class MdevStart:
    """mdevctl start: a definition (``uuid``, ``parent`` when the UUID is defined under several
    parents), or a transient mdev (``parent`` with ``mdev_type`` and ``attrs``, or ``config``)."""

    uuid: str | None = text(UUID_LEN, default=None)
    parent: str | None = text(64, default=None)
    mdev_type: str | None = text(64, default=None)
    attrs: list[dict[str, Any]] = items(256, default_factory=list)
    config: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class MdevSetAttrs:
    """mdevctl modify --live: write attributes of a running mdev, in order."""

    uuid: str = text(UUID_LEN)
    attrs: list[dict[str, Any]] = items(256, default_factory=list)


@dataclass(frozen=True, slots=True)
class MdevDefinitionRef:
    uuid: str = text(UUID_LEN)
    parent: str | None = text(64, default=None)


@dataclass(frozen=True, slots=True)
class MdevListDefined:
    parent: str | None = text(64, default=None)
    uuid: str | None = text(UUID_LEN, default=None)
