"""Every command handler, registered in :data:`registry` on import."""

from . import core  # noqa: F401  (registers its commands)
from .registry import Context, Handler, registry

__all__ = ["Context", "Handler", "registry"]
