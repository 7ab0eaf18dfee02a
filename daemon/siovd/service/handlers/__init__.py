"""Every command handler, registered in :data:`registry` on import."""

from siovd.service.handlers import (  # noqa: F401  (each registers its commands)
    accel,
    bus,
    core,
    definitions,
    dma,
    iommu,
    memory,
    sva,
    vfio_user,
)
from siovd.service.handlers.registry import Context, Handler, registry

__all__ = ["Context", "Handler", "registry"]
