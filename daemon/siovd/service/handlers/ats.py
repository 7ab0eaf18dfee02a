"""ATS_INVALIDATE_DONE (SPEC §8.21): a device's answer to a device-TLB invalidation."""

from __future__ import annotations

import structlog

from siov_protocol import Command
from siov_protocol.messages import Empty
from siov_protocol.messages_ats import AtsInvalidateDone
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


@registry.command(Command.ATS_INVALIDATE_DONE, AtsInvalidateDone)
def ats_invalidate_done(ctx: Context, req: AtsInvalidateDone) -> Empty:
    """``ENOENT`` unless ``cookie`` is pending for ``device`` and this connection emulates it
    (another client's cookie looks exactly like none)."""
    inv = ctx.daemon.iommu.atc.complete(ctx.session.id, req.device, req.cookie)
    log.debug("ats invalidation done", mdev=inv.device, cookie=inv.cookie, late=inv.timed_out)
    return Empty()
