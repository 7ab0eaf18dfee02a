"""accel-config rules with their errnos, the JSON shape, load-config, and the BAR0 image."""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Callable

import pytest

from siovd.model.accel import Accelerators, DsaParent, caps, embedded_default
from siovd.model.accel.device import DsaDevice
from siovd.model.accel.registers import BAR0_SIZE
from siovd.model.errors import SiovError


def refused(code: int, call: Callable[[], object], name: str = "") -> SiovError:
    with pytest.raises(SiovError) as exc:
        call()
    assert exc.value.errno == code, exc.value
    assert name in exc.value.message
    return exc.value


@pytest.fixture
def device() -> DsaDevice:
    return embedded_default()


# --- WQ attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "value", "code"),
    [
        ("mode", "shared", errno.EPERM),
        ("priority", 3, errno.EPERM),
        ("type", "kernel", errno.EPERM),
        ("name", "x", errno.EPERM),
        ("driver_name", "user", errno.EPERM),
        ("group_id", 1, errno.EPERM),
        ("max_transfer_size", 4096, errno.EPERM),
        ("max_batch_size", 32, errno.EPERM),
        ("ats_disable", 1, errno.EPERM),
        ("prs_disable", 1, errno.EPERM),
        ("op_config", 1, errno.EPERM),
        ("block_on_fault", 0, errno.ENXIO),  # sysfs returns ENXIO for these two
        ("threshold", 10, errno.ENXIO),
        ("size", 8, errno.EPERM),  # size needs the device disabled
    ],
)
def test_enabled_wq_refuses_configuration(
    device: DsaDevice, attr: str, value: object, code: int
) -> None:
    before = device.wqs[1].config()
    refused(code, lambda: device.wqs[1].configure({attr: value}), "dsa0/wq0.1")
    assert device.wqs[1].config() == before


def test_size_needs_the_device_disabled(device: DsaDevice) -> None:
    wq = device.wqs[0]
    wq.disable()
    err = refused(errno.EPERM, lambda: wq.configure({"size": 8}), "dsa0/wq0.0")
    assert "dsa0 is disabled" in err.message
    device.disable()
    wq.configure({"size": 8})
    assert wq.size == 8


def test_wq_value_rules(device: DsaDevice) -> None:
    device.disable()
    dwq, swq = device.wqs[0], device.wqs[1]
    refused(errno.EINVAL, lambda: swq.configure({"size": 65}), "more than 128")
    refused(errno.EINVAL, lambda: swq.configure({"priority": 0}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"priority": 16}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"threshold": 0}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"threshold": 65}), "1..size")
    swq.configure({"threshold": 63})
    refused(errno.EINVAL, lambda: dwq.configure({"threshold": 10}), "dedicated")
    refused(errno.EINVAL, lambda: swq.configure({"mode": "exclusive"}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"type": "mdev"}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"name": ""}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"group_id": 4}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"max_transfer_size": 0}), "dsa0/wq0.1")
    refused(errno.EINVAL, lambda: swq.configure({"max_transfer_size": 2**31 + 1}), "exceeds")
    refused(errno.EINVAL, lambda: swq.configure({"max_batch_size": 1025}), "exceeds")
    refused(errno.EINVAL, lambda: swq.configure({"op_config": 1 << 0x12}), "0x12")
    refused(errno.EINVAL, lambda: swq.configure({"size": "big"}), "integer")
    refused(errno.EINVAL, lambda: swq.configure({"colour": "red"}), "colour")
    swq.configure({"max_transfer_size": 3000, "max_batch_size": 100})
    assert (swq.max_transfer_size, swq.max_batch_size) == (4096, 128)
    swq.configure(
        {"op_config": "00000000,00000000,00000000,00000000,00000000,00000000,00000000,0000000b"}
    )
    assert swq.op_config == 0b1011


def test_configure_is_all_or_nothing(device: DsaDevice) -> None:
    swq = device.wqs[1]
    swq.disable()
    before = swq.config()
    refused(errno.EINVAL, lambda: swq.configure({"priority": 5, "group_id": 2, "threshold": 99}))
    assert swq.config() == before and swq.group is device.groups[0]
    assert swq in device.groups[0].wqs and swq not in device.groups[2].wqs


def test_mode_type_and_prs_side_effects(device: DsaDevice) -> None:
    swq = device.wqs[1]
    swq.disable()
    swq.configure({"mode": "dedicated"})
    assert swq.threshold == 0  # the kernel clears it
    swq.configure({"type": "kernel"})
    assert swq.name == ""  # a new type clears the name
    swq.configure({"prs_disable": 1})
    assert not swq.block_on_fault
    refused(errno.EOPNOTSUPP, lambda: swq.configure({"block_on_fault": 1}), "dsa0/wq0.1")


def test_wq_enable_rules() -> None:
    device = DsaDevice()
    wq = device.wqs[2]
    refused(errno.ENXIO, wq.enable, "dsa0 is not enabled")
    device.engines[0].configure({"group_id": 0})
    device.wqs[0].configure({"group_id": 0, "size": 4, "name": "a", "type": "user"})
    device.enable()
    refused(errno.ENXIO, wq.enable, "not in a group")
    device.disable()
    wq.configure({"group_id": 1})
    refused(errno.ENXIO, device.enable, "group0.1 has WQs but no engine")
    device.engines[1].configure({"group_id": 1})
    device.enable()
    refused(errno.ENXIO, wq.enable, "size 0")
    device.disable()
    wq.configure({"size": 8})
    device.enable()
    refused(errno.ENXIO, wq.enable, "no name")
    device.disable()
    wq.configure({"name": "n"})
    device.enable()
    refused(errno.ENODEV, wq.enable, "type none")
    wq.configure({"type": "user", "name": "n", "mode": "shared"})
    refused(errno.ENXIO, wq.enable, "threshold")
    wq.configure({"threshold": 4})
    wq.enable()
    refused(errno.EBUSY, wq.enable, "already enabled")
    wq.disable()
    refused(errno.ENODEV, wq.disable, "dsa0/wq0.2 is not enabled")


def test_device_enable_and_disable_rules() -> None:
    device = DsaDevice()
    refused(errno.ENXIO, device.enable, "no engine")
    device.engines[3].configure({"group_id": 2})
    refused(errno.ENXIO, device.enable, "no WQ")
    device.wqs[5].configure({"group_id": 2})
    device.enable()
    refused(errno.EBUSY, device.enable, "already enabled")
    device.disable()
    refused(errno.ENODEV, device.disable, "not enabled")


def test_disable_device_disables_its_wqs(device: DsaDevice) -> None:
    device.disable()
    assert not any(wq.enabled for wq in device.wqs)


def test_wqs_in_use_by_mdevs_cannot_be_disabled(device: DsaDevice) -> None:
    parent = DsaParent(device)
    parent.mdev_create("dsa-1dwq", "u1", 5)
    refused(errno.EBUSY, device.wqs[0].disable, "dsa0/wq0.0")
    refused(errno.EBUSY, device.disable, "wq0.0")
    parent.mdev_remove("u1")
    device.disable()


def test_device_group_and_engine_attributes(device: DsaDevice) -> None:
    group = device.groups[1]
    engine = device.engines[0]
    refused(errno.EPERM, lambda: device.configure({"read_buffer_limit": 8}), "dsa0")
    refused(errno.EPERM, lambda: group.configure({"traffic_class_a": 1}), "dsa0/group0.1")
    refused(errno.EPERM, lambda: engine.configure({"group_id": 1}), "dsa0/engine0.0")
    device.disable()
    refused(errno.EINVAL, lambda: device.configure({"read_buffer_limit": 97}), "dsa0")
    refused(errno.EINVAL, lambda: group.configure({"traffic_class_b": 8}), "dsa0/group0.1")
    refused(errno.EPERM, lambda: group.configure({"use_read_buffer_limit": 1}), "read_buffer_limit")
    refused(errno.EINVAL, lambda: group.configure({"tokens_reserved": 200}), "dsa0/group0.1")
    refused(errno.EINVAL, lambda: engine.configure({"group_id": 4}), "dsa0/engine0.0")
    refused(errno.EINVAL, lambda: group.configure({"speed": 1}), "speed")
    device.configure({"token_limit": 8})  # accel-config's older name
    group.configure({"tokens_reserved": 4, "use_token_limit": 1, "traffic_class_a": 3})
    assert (group.read_buffers_reserved, group.use_read_buffer_limit) == (4, True)
    assert device.read_buffer_limit == 8 and group.traffic_class_a == 3
    engine.configure({"group_id": 1})
    assert engine in group.engines and engine not in device.groups[0].engines
    engine.configure({"group_id": -1})
    assert engine.group is None and engine not in group.engines


# --- naming and JSON ------------------------------------------------------------------------------


def test_lookup_by_accel_config_names() -> None:
    accels = Accelerators.embedded()
    assert accels.wq("dsa0/wq0.1") is accels.wq("wq0.1") is accels.device("dsa0").wqs[1]
    assert accels.group("group0.0").id == 0 and accels.engine("dsa0/engine0.3").id == 3
    refused(errno.ENODEV, lambda: accels.wq("dsa0/wq0.8"), "wq0.8")
    refused(errno.ENODEV, lambda: accels.wq("wq1.0"), "dsa1")
    refused(errno.ENODEV, lambda: accels.device("dsa7"), "dsa7")
    refused(errno.ENODEV, lambda: accels.engine("motor0.1"), "motor0.1")


def _first_keys_are_dev(obj: object) -> None:
    if isinstance(obj, dict):
        if "dev" in obj:
            assert next(iter(obj)) == "dev"
        for value in obj.values():
            _first_keys_are_dev(value)
    elif isinstance(obj, list):
        for value in obj:
            _first_keys_are_dev(value)


def test_list_json_shape() -> None:
    listing = Accelerators.embedded().to_json()
    json.dumps(listing)
    _first_keys_are_dev(listing)
    (dev,) = listing
    assert (dev["dev"], dev["state"], dev["max_work_queues"], dev["work_queue_size"]) == (
        "dsa0",
        "enabled",
        8,
        128,
    )
    assert dev["max_batch_size"] == 1024 and dev["max_transfer_size"] == 2**31
    group0 = dev["groups"][0]
    assert group0["dev"] == "group0.0"
    assert [e["dev"] for e in group0["grouped_engines"]] == [f"engine0.{i}" for i in range(4)]
    dwq, swq = group0["grouped_workqueues"]
    assert (dwq["dev"], dwq["mode"], dwq["size"], dwq["type"], dwq["state"]) == (
        "wq0.0",
        "dedicated",
        64,
        "user",
        "enabled",
    )
    assert (swq["mode"], swq["threshold"], swq["group_id"]) == ("shared", 48, 0)
    assert [wq["dev"] for wq in dev["ungrouped workqueues"]] == [f"wq0.{i}" for i in range(2, 8)]
    assert all("group_id" not in wq for wq in dev["ungrouped workqueues"])  # below 0: omitted
    # accel-config 3.5.3 util/json.c, key for key; then siov's extras
    assert [k for k in dev if k != "event_log_size"] == [
        "dev", "read_buffer_limit", "max_groups", "max_work_queues", "max_engines",
        "work_queue_size", "numa_node", "op_cap", "gen_cap", "version", "state",
        "max_read_buffers", "max_batch_size", "ims_size", "max_transfer_size", "configurable",
        "pasid_enabled", "cdev_major", "clients", "groups", "ungrouped workqueues",
    ]  # fmt: skip
    assert list(dwq) == [
        "dev", "mode", "size", "group_id", "priority", "block_on_fault", "max_batch_size",
        "max_transfer_size", "cdev_minor", "type", "name", "driver_name", "threshold",
        "ats_disable", "state", "clients", "prs_disable", "op_config", "occupancy",
    ]  # fmt: skip
    assert dev["op_cap"][1:] == ["0", "0", "0"] and int(dev["op_cap"][0], 16) == caps.OPCAP
    saved = Accelerators.embedded().to_json(save=True)
    assert "state" not in saved[0] and "state" not in saved[0]["groups"][0]["grouped_workqueues"][0]
    assert "ungrouped workqueues" not in saved[0]


ACCFG_2G2Q = """[
  {"dev":"dsa0", "token_limit":0, "groups":[
    {"dev":"group0.0", "tokens_reserved":0, "use_token_limit":0, "tokens_allowed":0,
     "traffic_class_a":0, "traffic_class_b":1,
     "grouped_workqueues":[{"dev":"wq0.0", "mode":"shared", "size":16, "group_id":0,
       "priority":10, "block_on_fault":1, "type":"user", "name":"app1", "threshold":15}],
     "grouped_engines":[{"dev":"engine0.0", "group_id":0}, {"dev":"engine0.1", "group_id":0}]},
    {"dev":"group0.1", "tokens_reserved":0, "use_token_limit":0, "tokens_allowed":0,
     "traffic_class_a":0, "traffic_class_b":1,
     "grouped_workqueues":[{"dev":"wq0.1", "mode":"dedicated", "size":16, "group_id":1,
       "priority":10, "block_on_fault":1, "type":"user", "name":"app2", "threshold":0}],
     "grouped_engines":[{"dev":"engine0.2", "group_id":1}, {"dev":"engine0.3", "group_id":1}]},
    {"dev":"group0.2", "tokens_reserved":0, "use_token_limit":0, "tokens_allowed":0,
     "traffic_class_a":0, "traffic_class_b":1},
    {"dev":"group0.3", "tokens_reserved":0, "use_token_limit":0, "tokens_allowed":0,
     "traffic_class_a":0, "traffic_class_b":1}
  ]}
]"""


def test_load_accel_config_test_configuration() -> None:
    accels = Accelerators.embedded()
    device = accels.device("dsa0")
    before = accels.to_json()
    report = accels.load_config(json.loads(ACCFG_2G2Q))
    assert report.messages == ["dsa0 is active. Skipping..."] and accels.to_json() == before
    report = accels.load_config(json.loads(ACCFG_2G2Q), enable=True, force=True)
    assert report.messages == ["dsa0 is active. Disabling..."]
    assert report.enabled == ["Enabling device dsa0", "Enabling wq wq0.1", "Enabling wq wq0.0"]
    assert device.enabled
    wq0, wq1 = device.wqs[0], device.wqs[1]
    assert (wq0.mode, wq0.size, wq0.threshold, wq0.name, wq0.enabled) == (
        "shared",
        16,
        15,
        "app1",
        True,
    )
    assert (wq1.mode, wq1.size, wq1.group_id, wq1.enabled) == ("dedicated", 16, 1, True)
    assert [e.group_id for e in device.engines] == [0, 0, 1, 1]


def test_save_then_load_round_trips() -> None:
    accels = Accelerators.embedded()
    saved = accels.to_json(save=True)
    device = accels.device("dsa0")
    device.disable()
    device.wqs[1].configure({"size": 4, "threshold": 2, "priority": 2, "group_id": 3})
    device.engines[0].configure({"group_id": -1})
    accels.load_config(json.loads(json.dumps(saved)), enable=True)
    assert accels.to_json(save=True) == saved and device.enabled
    assert accels.to_json() == Accelerators.embedded().to_json()


def test_load_config_is_all_or_nothing() -> None:
    accels = Accelerators.embedded()
    device = accels.device("dsa0")
    saved = accels.to_json(save=True)
    device.disable()
    before = accels.to_json()
    bad = json.loads(json.dumps(saved))
    bad[0]["groups"][0]["grouped_workqueues"][0]["size"] = 100  # 100 + 64 > 128
    refused(errno.EINVAL, lambda: accels.load_config(bad), "more than 128")
    assert accels.to_json() == before
    bad = json.loads(json.dumps(saved))
    bad[0]["groups"][0]["grouped_workqueues"][0]["priority"] = 99
    refused(errno.EINVAL, lambda: accels.load_config(bad, enable=True), "priority")
    assert accels.to_json() == before and not device.enabled


def test_load_config_format_errors() -> None:
    accels = Accelerators.embedded()
    accels.device("dsa0").disable()
    refused(errno.EINVAL, lambda: accels.load_config([{"groups": [], "dev": "dsa0"}]), '"dev"')
    refused(errno.EINVAL, lambda: accels.load_config({"dev": "dsa0", "wheels": 4}), "wheels")
    refused(errno.ENODEV, lambda: accels.load_config([{"dev": "dsa3"}]), "dsa3")
    wrong_group = {
        "dev": "dsa0",
        "groups": [{"dev": "group0.1", "grouped_engines": [{"dev": "engine0.0", "group_id": 0}]}],
    }
    refused(errno.EINVAL, lambda: accels.load_config(wrong_group), "engine0.0")


# --- BAR0 ---------------------------------------------------------------------------------------


def u64(image: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", image, offset)[0])


def u32(image: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", image, offset)[0])


def test_bar0_capability_registers(device: DsaDevice) -> None:
    image = device.bar0()
    assert len(image) == BAR0_SIZE
    assert u32(image, 0x00) == 0x200
    gencap = u64(image, 0x10)
    assert gencap & 1 and gencap & 2  # block on fault, overlap copy
    assert (gencap >> 16) & 0x1F == 31 and (gencap >> 21) & 0xF == 10
    assert gencap >> 31 & 1  # configurable
    wqcap = u64(image, 0x20)
    assert (wqcap & 0xFFFF, (wqcap >> 16) & 0xFF) == (128, 8)
    assert wqcap >> 48 & 1 and wqcap >> 49 & 1  # shared and dedicated modes
    assert u64(image, 0x30) & 0xFF == 4 and u64(image, 0x38) & 0xFF == 4
    opcap = sum(u64(image, 0x40 + 8 * i) << (64 * i) for i in range(4))
    supported = [bit for bit in range(256) if opcap >> bit & 1]
    assert supported == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11, 0x20]
    assert u32(image, 0x90) & 3 == 1  # GENSTS: enabled
    offsets = u64(image, 0x60)
    grpcfg, wqcfg = (offsets & 0xFFFF) * 0x100, ((offsets >> 16) & 0xFFFF) * 0x100
    assert u64(image, grpcfg) == 0b11  # group 0: wq0.0 and wq0.1
    assert u64(image, grpcfg + 32) == 0xF  # and the four engines
    wq0 = image[wqcfg : wqcfg + 64]
    wq1 = image[wqcfg + 64 : wqcfg + 128]
    assert u32(wq0, 0) == 64 and u32(wq0, 8) & 1 == 1  # size, dedicated
    assert u32(wq1, 4) == 48 and u32(wq1, 8) & 1 == 0  # threshold, shared
    assert (u32(wq1, 8) >> 4) & 0xF == 10 and u32(wq1, 8) >> 1 & 1  # priority, bof
    assert u32(wq0, 12) & 0x1F == 31 and (u32(wq0, 12) >> 5) & 0xF == 10
    assert u32(wq0, 24) >> 30 == 1  # wq_state enabled
    assert u64(wq0, 32) == caps.OPCAP & (2**64 - 1)
    device.wqs[0].set_pasid(0x12345)
    wq0 = device.bar0()[wqcfg : wqcfg + 64]
    assert (u32(wq0, 8) >> 8) & 0xFFFFF == 0x12345 and u32(wq0, 8) >> 28 & 1


def test_event_log_size_and_progress_limits() -> None:
    # accel-config 4.x config-device -e and config-group -d/-p
    accels = Accelerators.embedded()
    device = accels.device("dsa0")
    refused(errno.EPERM, lambda: device.configure({"event_log_size": 128}), "event_log_size")
    device.disable()
    refused(errno.EINVAL, lambda: device.configure({"event_log_size": 63}), "64..65535")
    refused(
        errno.EINVAL, lambda: device.configure({"event_log_size": 128, "read_buffer_limit": 999})
    )
    assert device.event_log_size == 64  # all or nothing
    device.configure({"event_log_size": 128})
    assert accels.to_json()[0]["event_log_size"] == 128
    refused(
        errno.EOPNOTSUPP,
        lambda: device.groups[0].configure({"desc_progress_limit": 1}),
        "progress limits",
    )
