"""A domain from the client's side: what ``alloc_domain`` returns.

A :class:`Domain` names the domain (``id``; ``domain_id`` too, so every method taking a domain
accepts it) and keeps ``info``, the :class:`~siov_protocol.replies.DomainInfo` the daemon sent
when it was allocated (``domains()`` lists the current state)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from siov_protocol.replies import DomainInfo
from siov_protocol.schema import RecordKeyWarning


@dataclass(frozen=True, slots=True)
class Domain:
    info: DomainInfo

    @property
    def id(self) -> int:
        return self.info.domain_id

    @property
    def domain_id(self) -> int:
        return self.info.domain_id

    @property
    def type(self) -> str:
        return self.info.type

    def __int__(self) -> int:
        return self.info.domain_id

    def __getitem__(self, key: str) -> Any:
        """``domain["domain_id"]`` as the map replies had it, for one release (0.x)."""
        warnings.warn(
            f"Domain[{key!r}]: use .{key} or .info.{key} (replies are typed objects now)",
            RecordKeyWarning,
            stacklevel=2,
        )
        try:
            return getattr(self.info, key)
        except AttributeError:
            raise KeyError(key) from None
