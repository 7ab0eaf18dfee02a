"""``siovctl`` as mdevctl: define/list/modify/start/stop/types on mdevctl's own test cases.

The JSON below is written here from the facts of mdevctl's testdata (github.com/mdevctl/mdevctl,
testdata/list/defined.json and .text, testdata/define/defined.json, testdata/modify/*.expected):
the same parents, UUIDs, types and attributes, in mdevctl's shapes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from siov import cli
from tests.conftest import DaemonProcess
from tests.daemonproc import spawn_siovd

U_GVT = "4a0a190f-dcf3-4def-9342-c48768f0c940"
U_AP = "9f579710-6ffc-4201-987a-4ffa0fb1f3a5"
AP_ATTRS = [
    {"assign_adapter": "5"},
    {"assign_adapter": "6"},
    {"assign_domain": "0xab"},
    {"assign_control_domain": "0xab"},
    {"assign_domain": "4"},
    {"assign_control_domain": "4"},
]
AP = {"mdev_type": "vfio_ap-passthrough", "start": "manual", "attrs": AP_ATTRS}
# testdata/list/defined.json: U_AP is defined under two parents
DEFINED = [
    {
        "0000:00:02.0": [
            {U_GVT: {"mdev_type": "i915-GVTg_V5_8", "start": "auto", "attrs": []}},
            {U_AP: AP},
        ],
        "0000:00:03.0": [{U_AP: AP}],
    }
]
# testdata/list/defined.text
DEFINED_TEXT = (
    f"{U_GVT} 0000:00:02.0 i915-GVTg_V5_8 auto\n"
    f"{U_AP} 0000:00:02.0 vfio_ap-passthrough manual\n"
    f"{U_AP} 0000:00:03.0 vfio_ap-passthrough manual\n"
)
AP_VERBOSE = "  Attrs:\n" + "".join(
    f'    @{{{i}}}: {{"{k}":"{v}"}}\n' for i, a in enumerate(AP_ATTRS) for k, v in a.items()
)


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with tempfile.TemporaryDirectory(prefix="siov-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "d.sock")
        proc = spawn_siovd(path)
        try:
            yield DaemonProcess(path, proc)
        finally:
            proc.terminate()
            proc.wait(10)


class Run:
    def __init__(self, daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
        self.path, self.capsys = daemon.path, capsys

    def __call__(self, *args: str, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        rc = cli.main(["--socket", self.path, *args])
        out, err = self.capsys.readouterr()
        assert rc == code, (args, out, err)
        return out, err


@pytest.fixture
def run(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    r = Run(daemon, capsys)
    yield r
    for line in r("list")[0].splitlines():
        r("stop", "-u", line.split()[0])
    for uuid in {line.split()[0] for line in r("list", "--defined")[0].splitlines()}:
        r("undefine", "-u", uuid)  # every parent's definition of it, as mdevctl undefine


def write(tmp_path: Path, name: str, value: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value, indent=2))
    return str(path)


def test_defined_list_round_trips_through_define(run: Run, tmp_path: Path) -> None:
    jsonfile = write(tmp_path, "defined.json", DEFINED)
    assert run("define", "--jsonfile", jsonfile) == ("", "")
    out, _ = run("list", "--defined", "--dumpjson")
    assert json.loads(out) == DEFINED and out == json.dumps(DEFINED, indent=2)  # serde pretty
    assert run("list", "--defined")[0] == DEFINED_TEXT
    verbose = run("list", "--defined", "-v")[0]
    assert verbose == (
        DEFINED_TEXT.splitlines(keepends=True)[0]
        + DEFINED_TEXT.splitlines(keepends=True)[1]
        + AP_VERBOSE
        + DEFINED_TEXT.splitlines(keepends=True)[2]
        + AP_VERBOSE
    )  # testdata/list/defined-verbose.text
    out, _ = run("list", "--defined", "-p", "0000:00:03.0", "--dumpjson")
    assert json.loads(out) == [{"0000:00:03.0": [{U_AP: AP}]}]
    # one device found with -u: its config alone (mdevctl list -u)
    out, _ = run("list", "--defined", "-u", U_GVT, "--dumpjson")
    assert json.loads(out) == {"mdev_type": "i915-GVTg_V5_8", "start": "auto", "attrs": []}
    out, _ = run("list", "--defined", "-u", U_AP, "--dumpjson")  # two parents: the list
    assert json.loads(out) == [{p: [{U_AP: AP}] for p in ("0000:00:02.0", "0000:00:03.0")}]
    # a second define fails as a whole, and leaves what is defined
    _, err = run("define", "--jsonfile", jsonfile, code=1)
    assert "EEXIST" in err and "already defined" in err
    assert run("list", "--defined")[0] == DEFINED_TEXT


def test_define_list_is_atomic_and_honours_parent(run: Run, tmp_path: Path) -> None:
    run("define", "-u", U_AP, "-p", "0000:00:03.0", "-t", "vfio_ap-passthrough")
    jsonfile = write(tmp_path, "defined.json", DEFINED)
    _, err = run("define", "--jsonfile", jsonfile, code=1)
    assert f"Device {U_AP} on 0000:00:03.0 already defined" in err
    assert run("list", "--defined")[0].count("\n") == 1  # nothing of the file was defined
    run("define", "--jsonfile", jsonfile, "-p", "0000:00:02.0")  # only that parent's entries
    out, _ = run("list", "--defined", "-p", "0000:00:02.0", "--dumpjson")
    assert json.loads(out) == [{"0000:00:02.0": DEFINED[0]["0000:00:02.0"]}]
    _, err = run("define", "--jsonfile", jsonfile, "-p", "0000:00:09.0", code=1)
    assert "ENOENT" in err


def test_define_one_config_from_jsonfile(run: Run, tmp_path: Path) -> None:
    # testdata/define/defined.json and jsonfile.expected
    jsonfile = write(tmp_path, "one.json", AP)
    _, err = run("define", "-u", U_AP, "--jsonfile", jsonfile, code=1)
    assert "Parent device required" in err
    assert run("define", "-u", U_AP, "-p", "0000:00:02.0", "--jsonfile", jsonfile) == ("", "")
    out, _ = run("list", "--defined", "-u", U_AP, "--dumpjson")
    assert out == json.dumps(AP, indent=2)
    out, _ = run("define", "-p", "dsa0", "-t", "dsa-1dwq")  # no UUID: the new one is printed
    (new,) = out.split()
    assert f"{new} dsa0 dsa-1dwq manual\n" in run("list", "--defined")[0]
    _, err = run("define", "-u", U_AP, "-p", "0000:00:02.0", "-t", "x", code=1)
    assert f"Device {U_AP} on 0000:00:02.0 already defined" in err


def test_modify_with_all_its_options(run: Run, tmp_path: Path) -> None:
    parent = "0000:00:03.0"
    run("define", "-u", U_AP, "-p", parent, "--jsonfile", write(tmp_path, "d.json", AP))

    def stored() -> dict[str, object]:
        out = run("list", "--defined", "-u", U_AP, "-p", parent, "--dumpjson")[0]
        return dict(json.loads(out))

    # testdata/modify/addattr.expected: inserted at index 3
    run("modify", "-u", U_AP, "--addattr", "added-attr", "--value", "added-attr-value", "-i", "3")
    assert stored()["attrs"] == [*AP_ATTRS[:3], {"added-attr": "added-attr-value"}, *AP_ATTRS[3:]]
    run("modify", "-u", U_AP, "--delattr", "-i", "3")
    run("modify", "-u", U_AP, "--delattr", "-i", "2")  # delattr.expected
    assert stored()["attrs"] == AP_ATTRS[:2] + AP_ATTRS[3:]
    run("modify", "-u", U_AP, "--delattr")  # delattr-noindex.expected: the last one goes
    assert stored()["attrs"] == AP_ATTRS[:2] + AP_ATTRS[3:5]
    run("modify", "-u", U_AP, "-p", parent, "-a")  # auto.expected
    assert stored()["start"] == "auto"
    run("modify", "-u", U_AP, "-m", "-t", "changed-mdev-type")  # mdev_type.expected
    assert (stored()["start"], stored()["mdev_type"]) == ("manual", "changed-mdev-type")
    _, err = run("modify", "-u", U_AP, "--delattr", "-i", "9", code=1)
    assert "Attribute index 9 is invalid" in err and "@{0}" in err
    run("modify", "-u", U_AP, "-p", parent, "--jsonfile", write(tmp_path, "m.json", AP))
    assert stored() == AP
    for bad, message in (
        (["-a", "-m"], "mutually exclusive"),
        (["--addattr", "x"], "No attribute value provided"),
        (["--value", "v"], "requires '--addattr'"),
        (["-a", "-i", "1"], "cannot be used"),
        (["--live", "-a"], "'live' option must be used with 'jsonfile'"),
        ([], "modify needs one of"),
        (["--jsonfile", "x.json"], "Parent device required"),
    ):
        _, err = run("modify", "-u", U_AP, *bad, code=1)
        assert message in err, (bad, err)
    # the UUID defined under two parents needs -p
    run("define", "-u", U_AP, "-p", "0000:00:02.0", "-t", "vfio_ap-passthrough")
    _, err = run("modify", "-u", U_AP, "-a", code=1)
    assert "Please specify a parent" in err


def test_start_writes_attributes_or_fails(run: Run, tmp_path: Path) -> None:
    run("define", "-u", U_AP, "-p", "dsa0", "-t", "dsa-1dwq", "--addattr", "assign_adapter=5")
    _, err = run("start", "-u", U_AP, code=1)
    assert "ENOENT" in err and "Invalid attribute 'assign_adapter'" in err
    assert run("list")[0] == ""  # the failed start left no mdev behind
    run("modify", "-u", U_AP, "--delattr")
    run("modify", "-u", U_AP, "--addattr", "priority", "--value", "4")
    assert run("start", "-u", U_AP) == ("", "")
    assert run("list")[0] == f"{U_AP} dsa0 dsa-1dwq manual (defined)\n"
    assert f"{U_AP} dsa0 dsa-1dwq manual (active)\n" in run("list", "--defined")[0]
    raw = json.loads(run("--json", "accel", "list")[0])
    wq0 = raw[0]["groups"][0]["grouped_workqueues"][0]
    assert (wq0["priority"], wq0["clients"]) == (4, 1)
    # modify --live writes the running device's attributes; --defined stores them too
    live = write(tmp_path, "live.json", {"mdev_type": "dsa-1dwq", "start": "manual",
                                         "attrs": [{"priority": "6"}]})  # fmt: skip
    run("modify", "-u", U_AP, "--live", "--defined", "--jsonfile", live)
    raw = json.loads(run("--json", "accel", "list")[0])
    assert raw[0]["groups"][0]["grouped_workqueues"][0]["priority"] == 6
    out, _ = run("list", "--defined", "-u", U_AP, "--dumpjson")
    assert json.loads(out)["attrs"] == [{"priority": "6"}]
    wrong = write(tmp_path, "w.json", {"mdev_type": "dsa-1swq", "start": "manual", "attrs": []})
    _, err = run("modify", "-u", U_AP, "--live", "--jsonfile", wrong, code=1)
    assert "'type' cannot be changed on active mdev" in err
    out, _ = run("list", "--dumpjson")
    assert json.loads(out) == [
        {"dsa0": [{U_AP: {"mdev_type": "dsa-1dwq", "start": "manual", "attrs": []}}]}
    ]
    run("stop", "-u", U_AP)
    run("accel", "disable-wq", "dsa0/wq0.0")  # back to the embedded priority
    run("accel", "config-wq", "dsa0/wq0.0", "-p", "10")
    run("accel", "enable-wq", "dsa0/wq0.0")


def test_transient_start(run: Run, tmp_path: Path) -> None:
    out, _ = run("start", "-p", "dsa0", "-t", "dsa-1swq")
    (new,) = out.split()
    assert run("list")[0] == f"{new} dsa0 dsa-1swq manual\n"
    run("stop", "-u", new)
    jsonfile = write(tmp_path, "t.json", {"mdev_type": "siov_test-1", "start": "manual",
                                          "attrs": [{"k": "v"}]})  # fmt: skip
    _, err = run("start", "-u", U_GVT, "-p", "siov_test", "--jsonfile", jsonfile, code=1)
    assert "Invalid attribute 'k'" in err and run("list")[0] == ""
    _, err = run("start", "-u", U_GVT, code=1)
    assert "Device is insufficiently specified" in err
    _, err = run("start", "-t", "dsa-1swq", code=1)
    assert "can't provide type without parent" in err
    run("define", "-u", U_GVT, "-p", "dsa0", "-t", "dsa-1swq")
    _, err = run("start", "-u", U_GVT, "-t", "dsa-1dwq", code=1)
    assert f"Device {U_GVT} already exists on parent dsa0 with type dsa-1swq" in err


def test_types_in_mdevctl_shapes(run: Run) -> None:
    out, _ = run("types", "-p", "dsa0", "--dumpjson")
    (by_parent,) = json.loads(out)
    assert list(by_parent) == ["dsa0"]
    assert [next(iter(t)) for t in by_parent["dsa0"]] == ["dsa-1dwq", "dsa-1swq"]
    info = by_parent["dsa0"][0]["dsa-1dwq"]
    assert list(info) == ["available_instances", "device_api", "name", "description"]
    assert info["device_api"] == "vfio-pci"
    text = run("types", "-p", "dsa0")[0]
    assert text.startswith(
        "dsa0\n  dsa-1dwq\n    Available instances: 1\n    Device API: vfio-pci\n"
    )
    assert json.loads(run("types", "-p", "nothing", "--dumpjson")[0]) == []
    assert run("types", "-p", "nothing")[0] == ""
