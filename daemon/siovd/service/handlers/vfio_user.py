"""VFIO_USER_EXPOSE, VFIO_USER_UNEXPOSE: an mdev you own, served as a vfio-user device."""

from __future__ import annotations

from typing import Any

from siov_protocol import Command
from siov_protocol.messages_vfio_user import VfioUserExpose, VfioUserUnexpose
from siovd.service.handlers.registry import Context, registry
from siovd.service.vfio_user import endpoints


@registry.command(Command.VFIO_USER_EXPOSE, VfioUserExpose)
def vfio_user_expose(ctx: Context, req: VfioUserExpose) -> dict[str, Any]:
    table = endpoints(ctx.daemon)
    return table.info(table.expose(ctx.session, req.uuid, req.path, req.mode))


@registry.command(Command.VFIO_USER_UNEXPOSE, VfioUserUnexpose)
def vfio_user_unexpose(ctx: Context, req: VfioUserUnexpose) -> dict[str, Any]:
    endpoints(ctx.daemon).unexpose(ctx.session, req.uuid)
    return {}
