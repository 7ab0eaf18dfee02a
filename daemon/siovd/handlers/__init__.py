"""Every command handler, registered in :data:`registry` on import."""

from . import (  # noqa: F401  (each registers its commands)
    accel,
    bus,
    core,
    definitions,
    dma,
    iommu,
    memory,
)
from .registry import Context, Handler, registry

__all__ = ["Context", "Handler", "registry"]
