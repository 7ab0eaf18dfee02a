"""accel-config's own sample configs, where Debian's accel-config and accel-config-test packages
install them, load, save and reload to the same state; json-c's syntax and printer."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
from pathlib import Path

import pytest

from siov_protocol import jsonc
from siovd.model.accel import Accelerators
from siovd.model.accel.config import make_device
from siovd.model.errors import SiovError

# Debian bookworm's accel-config 3.5.3 (.ci/run installs the packages when they are missing)
SAMPLE_DIRS = (
    Path("/usr/libexec/accel-config/test/configs"),
    Path("/etc/accel-config/contrib/configs"),
)
SAMPLES = sorted(p for d in SAMPLE_DIRS for p in d.glob("*.conf"))
SAMPLE_NAMES = {p.name for p in SAMPLES}


def test_the_packaged_samples_are_there() -> None:
    assert {
        "2g2q_user_1.conf",
        "2g2q_user_2.conf",
        "app_profile.conf",
        "net_profile.conf",
        "os_profile.conf",
        "storage_profile.conf",
    } <= SAMPLE_NAMES


def accelerators() -> Accelerators:
    return Accelerators([make_device("dsa0"), make_device("iax1")])


def saved_state(accels: Accelerators) -> list[object]:
    """What save-config covers: enabled devices, their groups and engines, enabled WQs."""
    state: list[object] = []
    for d in accels.devices.values():
        if d.enabled:
            state.append((d.name, d.read_buffer_limit))
            state += [(g.path, g.config()) for g in d.groups]
            state += [(e.path, e.group_id) for e in d.engines]
            state += [(wq.path, wq.config()) for wq in d.wqs if wq.enabled]
    return state


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_loads_saves_and_reloads(path: Path) -> None:
    text = path.read_text()
    data = jsonc.loads(text)
    accels = accelerators()
    report = accels.load_config(data, enable=True, force=True)
    listed = {entry["dev"] for entry in data}
    assert all(accels.device(name).enabled for name in listed)
    # exactly the file's WQs are enabled (accfg/config.c activation list)
    file_wqs = {
        f"{dev['dev']}/{wq['dev']}"
        for dev in data
        for group in dev.get("groups", [])
        for wq in group.get("grouped_workqueues", [])
    }
    enabled = {wq.path for n in listed for wq in accels.device(n).wqs if wq.enabled}
    assert enabled == file_wqs, report
    for dev in data:
        for group in dev.get("groups", []):
            for entry in group.get("grouped_workqueues", []):
                wq = accels.wq(f"{dev['dev']}/{entry['dev']}")
                for key in ("mode", "size", "priority", "name", "type", "driver_name"):
                    assert getattr(wq, key) == entry[key], (wq.path, key)
                if entry["mode"] == "shared":
                    assert wq.threshold == entry["threshold"]
    state = saved_state(accels)
    saved = jsonc.loads(jsonc.dumps(accels.to_json(save=True)))
    # change everything, then the saved file brings it back
    for device in accels.devices.values():
        if device.enabled:
            device.disable()
        for wq in device.wqs:
            wq.configure({"size": 0, "group_id": -1, "priority": 1})
    accels.load_config(saved, enable=True)
    assert saved_state(accels) == state
    assert accels.to_json(save=True) == saved


def test_trailing_commas_are_read_as_json_c_reads_them() -> None:
    with_commas = [p for p in SAMPLES if jsonc.strip_relaxed(p.read_text()) != p.read_text()]
    assert len(with_commas) >= 2  # 3.5.3: net_profile and 2g2q_user_1 (4.x adds more)
    for path in with_commas:
        with pytest.raises(ValueError):
            json.loads(path.read_text())
        assert jsonc.loads(path.read_text())
    assert jsonc.loads('[1, /* a */ {"a,]": "x,}",}, // b\n]') == [1, {"a,]": "x,}"}]
    assert jsonc.loads('{"a": "\\",", }') == {"a": '",'}
    with pytest.raises(ValueError):
        jsonc.loads("[1,,]")


def _json_c() -> ctypes.CDLL:
    name = ctypes.util.find_library("json-c")
    assert name, "libjson-c (a dependency of Debian's accel-config) is not installed"
    lib = ctypes.CDLL(name)
    lib.json_tokener_parse.restype = ctypes.c_void_p
    lib.json_tokener_parse.argtypes = [ctypes.c_char_p]
    lib.json_object_to_json_string_ext.restype = ctypes.c_char_p
    lib.json_object_to_json_string_ext.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.json_object_put.argtypes = [ctypes.c_void_p]
    return lib


def test_dumps_is_json_c_pretty_byte_for_byte() -> None:
    lib = _json_c()
    values: list[object] = [
        accelerators().to_json(),
        accelerators().to_json(save=True),
        [],
        [{}, {"a": [], "b": {"c": [1, -2, "x/y", 'q"'], "d": {}}}],
    ]
    values += [jsonc.loads(p.read_text()) for p in SAMPLES]
    for value in values:
        obj = lib.json_tokener_parse(json.dumps(value).encode())
        try:
            expected = lib.json_object_to_json_string_ext(obj, 2).decode()  # PRETTY
        finally:
            lib.json_object_put(obj)
        assert jsonc.dumps(value) == expected


def test_unnamed_wq_attributes_are_left_alone() -> None:
    # accel-config 4.x contrib/configs/user_default_profile.conf lists wq0.0 without a size
    accels = accelerators()
    wq = accels.wq("dsa0/wq0.0")
    assert wq.size == 64
    entry = {"dev": "wq0.0", "mode": "dedicated", "group_id": 0, "type": "user", "name": "u"}
    config = [
        {
            "dev": "dsa0",
            "groups": [
                {
                    "dev": "group0.0",
                    "grouped_workqueues": [entry],
                    "grouped_engines": [{"dev": "engine0.0", "group_id": 0}],
                }
            ],
        }
    ]
    accels.load_config(config, enable=True, force=True)
    assert (wq.size, wq.name, wq.enabled) == (64, "u", True)
    # the shared wq0.1 the file does not mention keeps its configuration and stays disabled
    other = accels.wq("dsa0/wq0.1")
    assert (other.size, other.mode, other.threshold, other.enabled) == (64, "shared", 48, False)


def test_save_config_output_loads_back_after_changes() -> None:
    accels = accelerators()
    device = accels.device("dsa0")
    device.wqs[1].disable()  # a disabled grouped WQ and six ungrouped ones
    saved = accels.to_json(save=True)
    names = [wq["dev"] for g in saved[0]["groups"] for wq in g.get("grouped_workqueues", [])]
    assert names == ["wq0.0"] and "ungrouped workqueues" not in saved[0]
    assert [d["dev"] for d in saved] == ["dsa0"]  # iax1 is disabled: not saved (3.5.3)
    device.disable()
    report = accels.load_config(jsonc.loads(jsonc.dumps(saved)), enable=True)
    assert report.messages == [] and report.enabled == ["Enabling device dsa0", "Enabling wq wq0.0"]


def test_force_refuses_while_mdevs_use_the_device() -> None:
    accels = accelerators()
    accels.wq("dsa0/wq0.0").clients = 1
    saved = accels.to_json(save=True)
    with pytest.raises(SiovError) as exc:
        accels.load_config(saved, force=True)
    assert exc.value.errno == errno.EBUSY and "wq0.0" in exc.value.message
    assert accels.device("dsa0").enabled


def test_iax_device_lists_as_accel_config_lists_one() -> None:
    (_, iax) = accelerators().to_json()
    assert iax["dev"] == "iax1" and "read_buffer_limit" not in iax
    assert "max_read_buffers" not in iax
    assert list(iax["groups"][0]) == ["dev", "traffic_class_a", "traffic_class_b"]
    assert [e["dev"] for e in iax["ungrouped_engines"]] == [f"engine1.{i}" for i in range(8)]
    with pytest.raises(ValueError):
        make_device("qat0")


def test_daemon_config_file_reads_json_c_and_names_devices() -> None:
    from siovd.host.config import ConfigError
    from siovd.service.daemon import load_accelerators

    net = next(p for p in SAMPLES if p.name == "net_profile.conf")  # has trailing commas
    accels = load_accelerators(str(net), ["dsa0", "iax1"])
    assert [wq.name for wq in accels.device("dsa0").wqs[:4]] == ["app1", "app2", "app3", "app4"]
    assert not accels.device("iax1").enabled
    with pytest.raises(ConfigError) as exc:
        load_accelerators("", ["dsa0", "qat1"])
    assert "accel.devices" in str(exc.value) and "qat1" in str(exc.value)


def test_a_failed_forced_load_leaves_the_device_as_it_was() -> None:
    accels = accelerators()
    before = accels.to_json()
    saved = accels.to_json(save=True)
    saved[0]["groups"][0]["grouped_workqueues"][1]["priority"] = 99
    with pytest.raises(SiovError) as exc:
        accels.load_config(saved, enable=True, force=True)
    assert exc.value.errno == errno.EINVAL and "priority" in exc.value.message
    assert accels.to_json() == before
