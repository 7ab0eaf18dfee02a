"""Every command handler, registered in :data:`registry` on import."""

from siovd.service.handlers import (  # noqa: F401  (each registers its commands)
    accel,
    ats,
    bus,
    core,
    definitions,
    dma,
    iommu,
    iommu_ext,
    irq_remap,
    memory,
    sva,
    vfio_user,
)
from siovd.service.handlers.registry import Context, Deferred, Handler, registry

__all__ = ["Context", "Deferred", "Handler", "registry"]
