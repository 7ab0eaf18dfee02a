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

    parent: str = text(64)
    uuid: str | None = text(UUID_LEN, default=None)
    mdev_type: str | None = text(64, default=None)
    start: str = text(8, default="manual")  # auto | manual
    attrs: list[dict[str, Any]] = items(256, default_factory=list)
    config: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class MdevDefinitionRef:
    uuid: str = text(UUID_LEN)
    parent: str | None = text(64, default=None)


@dataclass(frozen=True, slots=True)
class MdevListDefined:
    parent: str | None = text(64, default=None)
    uuid: str | None = text(UUID_LEN, default=None)
