"""The sysfs tree and its stores, without FUSE: formats, links, and the errnos a store gets
before it reaches the daemon (drivers/base/bus.c bind/unbind, kernfs open rules)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyfuse3")

from siov_host.fs import OpCapByReader
from siov_host.tree import Store, SysfsError, Tree, op_cap_text, store_for

BITMAP = "00000000,00000000,00000000,00000000,00000000,00000000,00000001,000303ff"


def _wq(name: str, state: str, wtype: str = "user", mode: str = "dedicated") -> dict[str, Any]:
    return {
        "dev": name,
        "mode": mode,
        "size": 16,
        "group_id": 0,
        "priority": 10,
        "block_on_fault": 1,
        "max_batch_size": 1024,
        "max_transfer_size": 1 << 31,
        "type": wtype,
        "name": "app",
        "driver_name": "user",
        "threshold": 0,
        "prs_disable": 0,
        "ats_disable": 0,
        "op_config": BITMAP,
        "state": state,
        "clients": 0,
        "occupancy": 0,
    }


def _device(state: str = "enabled", wq_state: str = "enabled") -> list[dict[str, Any]]:
    return [
        {
            "dev": "dsa0",
            "read_buffer_limit": 0,
            "max_groups": 4,
            "max_work_queues": 8,
            "max_engines": 4,
            "work_queue_size": 128,
            "numa_node": -1,
            "op_cap": BITMAP,
            "gen_cap": "0x815f030f",
            "version": "0x200",
            "state": state,
            "max_read_buffers": 96,
            "max_batch_size": 1024,
            "max_transfer_size": 1 << 31,
            "configurable": 1,
            "pasid_enabled": 1,
            "clients": 0,
            "groups": [
                {
                    "dev": "group0.0",
                    "read_buffers_reserved": 0,
                    "use_read_buffer_limit": 0,
                    "read_buffers_allowed": 96,
                    "traffic_class_a": 0,
                    "traffic_class_b": 1,
                    "grouped_workqueues": [_wq("wq0.0", wq_state)],
                    "grouped_engines": [{"dev": "engine0.0", "group_id": 0}],
                }
            ],
            "ungrouped workqueues": [_wq("wq0.1", "disabled", "none")],
        }
    ]


def test_op_cap_in_both_kernel_formats() -> None:
    assert op_cap_text(BITMAP, "bitmap") == BITMAP + "\n"
    # the old sysfs.c: four u64 words, lowest first, "%#llx " each
    assert op_cap_text(BITMAP, "u64x4") == "0x1000303ff 0x0 0x0 0x0 \n"
    # the daemon may also list it as accel-config 3.x prints it: four words, lowest first
    words = ["0x1000303ff", "0", "0", "0"]
    assert op_cap_text(words, "bitmap") == BITMAP + "\n"
    assert op_cap_text(words, "u64x4") == "0x1000303ff 0x0 0x0 0x0 \n"


def test_tree_layout_and_links() -> None:
    tree = Tree(_device())
    node = tree.get("bus/dsa/devices/wq0.0")
    assert node is not None and (node.kind, node.content) == ("link", "dsa0/wq0.0")
    driver = tree.get("bus/dsa/devices/dsa0/wq0.0/driver")
    assert driver is not None and driver.content == "../../../drivers/user"
    assert tree.get("bus/dsa/devices/dsa0/wq0.1/driver") is None
    dev_dsa = tree.get("dev/dsa")
    assert dev_dsa is not None and dev_dsa.children == ("wq0.0",)
    group = tree.get("bus/dsa/devices/dsa0/group0.0/work_queues")
    assert group is not None and group.content == "wq0.0\n"
    minor = tree.get("bus/dsa/devices/dsa0/wq0.1/cdev_minor")
    assert minor is not None and minor.content is None and minor.read_errno == errno.ENXIO


@pytest.mark.parametrize(
    ("path", "value", "err"),
    [
        ("bus/dsa/devices/dsa0/max_groups", b"1", errno.EACCES),
        ("bus/dsa/devices/dsa0/nothing", b"1", errno.ENOENT),
        ("bus/dsa/drivers/idxd/bind", b"dsa0", None),  # the daemon answers EBUSY
        ("bus/dsa/drivers/user/bind", b"wq0.0", errno.EBUSY),
        ("bus/dsa/drivers/user/bind", b"wq0.9", errno.ENODEV),
        ("bus/dsa/drivers/idxd/bind", b"wq0.1", errno.ENODEV),
        ("bus/dsa/drivers/dmaengine/unbind", b"wq0.0", errno.ENODEV),
        ("bus/dsa/drivers/user/unbind", b"wq0.1", errno.ENODEV),
    ],
)
def test_store_errnos(path: str, value: bytes, err: int | None) -> None:
    tree = Tree(_device())
    if err is None:
        assert store_for(tree, path, value) == Store("enable_device", "dsa0")
        return
    with pytest.raises(SysfsError) as info:
        store_for(tree, path, value)
    assert info.value.errno == err


def test_stores_become_commands() -> None:
    tree = Tree(_device())
    base = "bus/dsa/devices/dsa0"
    assert store_for(tree, f"{base}/wq0.1/size", b"8\n") == Store(
        "config_wq", "dsa0/wq0.1", {"size": 8}
    )
    assert store_for(tree, f"{base}/wq0.1/name", b"my app\n") == Store(
        "config_wq", "dsa0/wq0.1", {"name": "my app"}
    )
    assert store_for(tree, f"{base}/group0.0/tokens_reserved", b"0x2") == Store(
        "config_group", "dsa0/group0.0", {"read_buffers_reserved": 2}
    )
    assert store_for(tree, "bus/dsa/drivers/user/unbind", b"wq0.0") == Store(
        "disable_wq", "dsa0/wq0.0"
    )
    assert store_for(tree, "bus/dsa/drivers/idxd/unbind", b"dsa0") == Store(
        "disable_device", "dsa0"
    )


def test_op_cap_format_follows_the_readers_library(tmp_path: Path) -> None:
    old = tmp_path / "libaccel-config.so.1.0.0"
    old.write_bytes(b"\0op_cap\0%lx %lx %lx %lx\0")
    new = tmp_path / "libaccel-config.so.1.4.0"
    new.write_bytes(b"\0op_cap\0%08x,%08x\0")
    reader = OpCapByReader()
    assert reader._lib_format(str(old)) == "u64x4"
    assert reader._lib_format(str(new)) == "bitmap"
    # this process has no libaccel-config mapped: what the kernel of this machine prints
    assert reader.for_pid(os.getpid()) == "bitmap"
    assert OpCapByReader(forced="u64x4").for_pid(os.getpid()) == "u64x4"
