"""Every command handler, registered in :data:`registry` on import."""

from . import bus, core, definitions, dma, iommu, memory  # noqa: F401  (each registers its commands)
from .registry import Context, Handler, registry

__all__ = ["Context", "Handler", "registry"]
