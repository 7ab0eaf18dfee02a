"""VFIO_USER_EXPOSE, VFIO_USER_UNEXPOSE: an mdev you own, served as a vfio-user device."""

from __future__ import annotations

from siov_protocol import Command
from siov_protocol.messages import EMPTY, Empty
from siov_protocol.messages_vfio_user import VfioUserExpose, VfioUserUnexpose
from siov_protocol.replies import VfioUserEndpoint
from siovd.service.handlers.registry import Context, registry
from siovd.service.vfio_user import endpoints


@registry.command(Command.VFIO_USER_EXPOSE, VfioUserExpose)
def vfio_user_expose(ctx: Context, req: VfioUserExpose) -> VfioUserEndpoint:
    table = endpoints(ctx.daemon)
    return table.info(table.expose(ctx.session, req.uuid, req.path, req.mode))


@registry.command(Command.VFIO_USER_UNEXPOSE, VfioUserUnexpose)
def vfio_user_unexpose(ctx: Context, req: VfioUserUnexpose) -> Empty:
    endpoints(ctx.daemon).unexpose(ctx.session, req.uuid)
    return EMPTY
