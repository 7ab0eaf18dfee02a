"""A page request injected for an accelerator mdev (TRIGGER_IOPF, SPEC §8.19) shares the page
request queue with the accelerator's own block-on-fault requests: removing the mdev, or its
client leaving, with one pending must cancel it cleanly (the frame fuzzer found a crash)."""

from __future__ import annotations

import siov
from siov_protocol import Command
from tests.conftest import DaemonProcess
from tests.helpers import settle


def test_removing_an_mdev_with_an_injected_page_request(siovd_proc: DaemonProcess) -> None:
    with siov.BlockingClient(siovd_proc.path) as client:
        mdev = client.create_dsa_mdev("dsa-1dwq")
        client.call(Command.DEVICE_GET_INFO, {"device": mdev.uuid})  # the accelerator knows it
        client.trigger_iopf(mdev.uuid, 0x1000)
        assert client.next_event(Command.EVENT_PAGE_REQUEST).body["device"] == mdev.uuid
        client.remove_mdev(mdev.uuid)  # was EIO: forget() read a PRI payload as a Blocked
        stats = client.call(Command.STATS)["accel"]
        assert stats["page_requests_cancelled"] == 0  # no accelerator work was waiting
    with siov.BlockingClient(siovd_proc.path) as client:
        mdev = client.create_dsa_mdev("dsa-1dwq")
        client.call(Command.DEVICE_GET_INFO, {"device": mdev.uuid})
        client.trigger_iopf(mdev.uuid, 0x1000)
    # the client left with it pending: released without an error, and the daemon serves on
    with siov.BlockingClient(siovd_proc.path) as client:
        settle(lambda: client.info().counts["clients"] == 1, "the other client released")
        assert client.create_dsa_mdev("dsa-1dwq")
