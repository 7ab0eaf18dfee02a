"""SVA_BIND / SVA_UNBIND and the user-WQ char device (WQ_OPEN, WQ_SUBMIT, WQ_CLOSE).

Thin: validation of the fds and the char-device rules live in the model
(:mod:`siovd.model.iommu.sva`, :mod:`siovd.model.accel.cdev`), bookkeeping in
:mod:`siovd.service.sva`.
"""

from __future__ import annotations

from siov_protocol import Command
from siov_protocol.messages import EMPTY, Empty
from siov_protocol.messages_sva import SVA_FDS, SvaBind, SvaUnbind, WqClose, WqOpen, WqSubmit
from siov_protocol.replies import SvaBindReply, WqOpenReply, WqSubmitReply
from siovd.service.handlers.registry import Context, registry


@registry.command(Command.SVA_BIND, SvaBind, max_fds=SVA_FDS)
def sva_bind(ctx: Context, req: SvaBind) -> SvaBindReply:
    domain = ctx.daemon.sva.bind(ctx.session, req.dev, ctx.fds)
    return SvaBindReply(pasid=domain.pasid, domain=domain.id)


@registry.command(Command.SVA_UNBIND, SvaUnbind)
def sva_unbind(ctx: Context, req: SvaUnbind) -> Empty:
    ctx.daemon.sva.unbind(ctx.session, req.dev, req.pasid)
    return EMPTY


@registry.command(Command.WQ_OPEN, WqOpen, max_fds=SVA_FDS)
def wq_open(ctx: Context, req: WqOpen) -> WqOpenReply:
    sva = ctx.daemon.sva
    return sva.reply(sva.open(ctx.session, req.device, req.wq, ctx.fds))


@registry.command(Command.WQ_SUBMIT, WqSubmit)
def wq_submit(ctx: Context, req: WqSubmit) -> WqSubmitReply:
    return WqSubmitReply(results=ctx.daemon.sva.submit(ctx.session, req.handle, req.descriptors))


@registry.command(Command.WQ_CLOSE, WqClose)
def wq_close(ctx: Context, req: WqClose) -> Empty:
    ctx.daemon.sva.close(ctx.session, req.handle)
    return EMPTY
