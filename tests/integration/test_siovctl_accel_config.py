"""``siovctl accel`` behaves as accel-config (3.5.3 output, 4.x options) on accel-config's own
sample files, as Debian installs them, against a real siovd with a dsa0 and an iax1."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from siov import cli
from siov.accel_config import DEVICE_KEYS, ENGINE_KEYS, GROUP_KEYS, WQ_KEYS
from siov_protocol import jsonc
from tests.conftest import DaemonProcess
from tests.daemonproc import spawn_siovd
from tests.unit.test_accel_samples import SAMPLES


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with tempfile.TemporaryDirectory(prefix="siov-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "d.sock")
        config = os.path.join(tmp, "siovd.toml")
        Path(config).write_text('[accel]\ndevices = ["dsa0", "iax1"]\n')
        proc = spawn_siovd(path, "--config", config)
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
        rc = cli.main(["--socket", self.path, "accel", *args])
        out, err = self.capsys.readouterr()
        assert rc == code, (args, out, err)
        return out, err

    def raw(self) -> list[dict[str, object]]:
        self.capsys.readouterr()
        assert cli.main(["--socket", self.path, "--json", "accel", "list"]) == 0
        listing: list[dict[str, object]] = json.loads(self.capsys.readouterr().out)
        return listing


@pytest.fixture
def run(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    r = Run(daemon, capsys)
    yield r
    # leave the shared daemon as it started: dsa0 as the embedded default, iax1 disabled
    default = Path(tempfile.mkdtemp(prefix="siov-accfg-")) / "default.conf"
    default.write_text(jsonc.dumps(EMBEDDED) + "\n")
    for dev in r.raw():
        if dev["state"] == "enabled":
            r("disable-device", str(dev["dev"]))
    # sizes the file does not name stay (accel-config too): clear them all first
    r("config-wq", "all", "-s", "0", "-g", "-1", "-r", "0")  # 3.5.3 files lack prs_disable
    r("config-device", "all", "-e", "64", "-l", "0")
    r("load-config", "-c", str(default), "-e")


EMBEDDED: list[dict[str, object]] = []


@pytest.fixture(autouse=True, scope="module")
def _embedded(daemon: DaemonProcess) -> None:
    import siov

    with siov.BlockingClient(daemon.path) as client:
        EMBEDDED[:] = client.accel_save_config()


def _keys_ok(obj: object) -> None:
    """Every key is one 3.5.3 prints for that kind of object."""
    if isinstance(obj, list):
        for item in obj:
            _keys_ok(item)
        return
    assert isinstance(obj, dict)
    name = str(obj["dev"])
    kind = next(k for k in ("wq", "group", "engine", "") if name.startswith(k))
    allowed = {"wq": WQ_KEYS, "group": GROUP_KEYS, "engine": ENGINE_KEYS, "": DEVICE_KEYS}[kind]
    assert set(obj) <= allowed, set(obj) - allowed
    for value in obj.values():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            _keys_ok(value)


def test_list_is_accel_config_353_output(run: Run) -> None:
    out, err = run("list")
    listing = jsonc.loads(out)
    assert out == jsonc.dumps(listing) + "\n" and err == ""
    assert [d["dev"] for d in listing] == ["dsa0"]  # iax1 is disabled: only with -i
    _keys_ok(listing)
    (dsa0,) = listing
    wqs = [w for g in dsa0["groups"] for w in g.get("grouped_workqueues", [])]
    assert [w["dev"] for w in wqs] == ["wq0.0", "wq0.1"]  # only enabled WQs without -i
    assert "ungrouped workqueues" not in dsa0
    assert '"dev":"dsa0"' in out and "occupancy" not in out
    out, _ = run("list", "-i")
    idle = jsonc.loads(out)
    assert [d["dev"] for d in idle] == ["dsa0", "iax1"]
    _keys_ok(idle)
    ungrouped = idle[0]["ungrouped workqueues"]
    assert [w["dev"] for w in ungrouped] == [f"wq0.{i}" for i in range(2, 8)]
    assert all("group_id" not in w for w in ungrouped)
    out, _ = run("list", "-i", "--siov")
    assert "occupancy" in out and "op_config" in out


def test_list_filters_and_views(run: Run) -> None:
    out, _ = run("list", "-d", "dsa0")
    assert out.startswith("devices:\n{\n") and jsonc.loads(out.split("\n", 1)[1])["dev"] == "dsa0"
    out, err = run("list", "-d", "iax1", code=1)
    assert out == "" and "No matching device found" in err
    out, _ = run("list", "-d", "iax1", "-i")
    assert jsonc.loads(out.split("\n", 1)[1])["dev"] == "iax1"
    out, _ = run("list", "-G")
    head, rest = out.split("\n", 2)[:2], out.split("\n", 2)[2]
    assert head == ["groups:", "device dsa0:"]
    assert [g["dev"] for g in jsonc.loads(rest)] == [f"group0.{i}" for i in range(4)]
    out, _ = run("list", "-g", "dsa0/group0.1")
    assert out.startswith("groups:\ndevice dsa0:\n")
    assert [g["dev"] for g in jsonc.loads(out.split("\n", 2)[2])] == ["group0.1"]
    out, _ = run("list", "-Q")
    assert out.startswith("workqueues:\ndevice dsa0:\ngrouped workqueues:\ngroup id 0:\n")
    out, _ = run("list", "-q", "dsa0/wq0.1")
    assert out.startswith("workqueues:\ndevice dsa0:\n[")
    assert [w["dev"] for w in jsonc.loads(out.split("\n", 2)[2])] == ["wq0.1"]
    out, _ = run("list", "-E")
    assert "grouped engines:\ngroup id 0:\n" in out
    out, _ = run("list", "-e", "dsa0/engine0.2")
    assert [e["dev"] for e in jsonc.loads(out.split("\n", 2)[2])] == ["engine0.2"]
    _, err = run("list", "-q", "dsa0/wq0.9", code=1)
    assert "dsa0/wq0.9 workqueue not found" in err
    _, err = run("list", "-g", "dsa5/group5.0", code=1)
    assert "dsa5 device not found" in err


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_load_save_reload(run: Run, sample: Path, tmp_path: Path) -> None:
    data = jsonc.loads(sample.read_text())
    devices = [d["dev"] for d in data]
    # an enabled device is skipped, with accel-config's message, and exit 0
    out, err = run("load-config", "-c", str(sample))
    if "dsa0" in devices:
        assert err == "dsa0 is active. Skipping...\n" and out == ""
    out, err = run("load-config", "-c", str(sample), "-e", "-f")
    lines = out.splitlines()
    wqs = [
        w["dev"] for d in data for g in d.get("groups", []) for w in g.get("grouped_workqueues", [])
    ]
    assert lines == [f"Enabling device {d}" for d in reversed(devices)] + [
        f"Enabling wq {w}" for w in reversed(wqs)
    ]
    listed = run("list")[0]
    saved = tmp_path / "saved.conf"
    assert run("save-config", "-s", str(saved)) == ("", "")
    assert saved.read_text() == jsonc.dumps(jsonc.loads(saved.read_text())) + "\n"
    for d in devices:
        run("disable-device", d)
    run("load-config", "-c", str(saved), "-e")
    assert run("list")[0] == listed
    again = tmp_path / "again.conf"
    run("save-config", "-s", str(again))
    assert again.read_text() == saved.read_text()


def test_enable_disable_several_names_and_all(run: Run) -> None:
    _, err = run("disable-wq", "dsa0/wq0.0", "dsa0/wq0.1", "dsa0/wq0.5", "dsa0/wq0.9", "-v")
    assert "dsa0/wq0.5 is in disabled mode already, skipping..." in err
    assert "dsa0/wq0.9 wq not found" in err
    assert err.endswith("disabled 2 wq(s) out of 4\n")
    _, err = run("enable-wq", "dsa0/wq0.0", "dsa0/wq0.1")
    assert err == "enabled 2 wq(s) out of 2\n"
    _, err = run("enable-wq", "dsa0/wq0.0", code=1)
    assert "is in enabled or locked mode, skipping..." in err and "enabled 0 wq(s)" in err
    _, err = run("disable-device", "all", "-f")
    assert "iax1 is in disabled state already, skipping..." in err
    assert err.endswith("disabled 1 device(s) out of 2\n")
    raw = run.raw()
    assert all(d["state"] == "disabled" for d in raw)


def test_config_verbs_take_several_names_and_4x_options(run: Run) -> None:
    run("disable-device", "dsa0")
    assert run("config-device", "all", "-e", "256", "-l", "8") == ("", "")
    dsa0, iax1 = run.raw()
    assert (dsa0["event_log_size"], iax1["event_log_size"]) == (256, 256)
    assert dsa0["read_buffer_limit"] == 8
    run("config-group", "dsa0/group0.1", "dsa0/group0.2", "-r", "2", "-t", "4", "-l", "1")
    run("config-group", "dsa0/group0.3", "-a", "3", "-b", "4")
    groups = {g["dev"]: g for g in run.raw()[0]["groups"]}  # type: ignore[attr-defined]
    assert groups["group0.2"]["read_buffers_reserved"] == 2
    assert groups["group0.1"]["read_buffers_allowed"] == 4
    assert groups["group0.2"]["use_read_buffer_limit"] == 1
    assert (groups["group0.3"]["traffic_class_a"], groups["group0.3"]["traffic_class_b"]) == (3, 4)
    _, err = run("config-group", "dsa0/group0.0", "-d", "1", code=1)
    assert "ENOTSUP" in err and "progress limits" in err  # EOPNOTSUPP is ENOTSUP on Linux
    run("config-wq", "dsa0/wq0.1", "-s", "32", "-t", "16")
    _, err = run("config-wq", "dsa0/wq0.3", "dsa0/wq0.4", "-g", "1", "-m", "dedicated", "-s", "4")
    assert err == ""
    run("config-engine", "dsa0/engine0.3", "-g", "1")
    _, err = run("config-wq", "dsa0/wq0.9", "-s", "1")
    assert err == "dsa0/wq0.9 is not a valid wq name\n"
    _, err = run("config-device", "dsa0", "-e", "1", code=1)
    assert "EINVAL" in err and "event_log_size" in err


def test_config_user_default(run: Run) -> None:
    run("disable-device", "dsa0")
    out, err = run("config-user-default")
    raw = run.raw()
    for dev in raw:
        assert dev["state"] == "enabled", err
        wqs = [w for g in dev["groups"] for w in g.get("grouped_workqueues", [])]  # type: ignore[attr-defined]
        assert len(wqs) == 8 and all(w["state"] == "enabled" for w in wqs)
        assert {(w["name"], w["mode"], w["size"], w["threshold"]) for w in wqs} == {
            ("user_default_wq", "shared", 16, 16)
        }
    out, _ = run("config-user-default", "-d")
    assert out == "disable WQs named as user_default_wq\n"
    assert all(d["state"] == "disabled" for d in run.raw())


def test_default_paths_and_bad_files(run: Run, tmp_path: Path) -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["accel", "load-config"]).config == cli.ACCFG_CONF_FILE
    assert parser.parse_args(["accel", "save-config"]).saved_file == cli.ACCFG_CONF_FILE
    assert cli.ACCFG_CONF_FILE == "/etc/accel-config/accel-config.conf"
    bad = tmp_path / "bad.conf"
    bad.write_text('[{"dev":"dsa0",,}]')
    _, err = run("load-config", "-c", str(bad), code=1)
    assert "EINVAL" in err and "not accel-config JSON" in err
    _, err = run("load-config", "-c", str(tmp_path / "missing.conf"), code=1)
    assert "ENOENT" in err
    _, err = run("save-config", "-s", str(tmp_path / "no" / "such" / "dir.conf"), code=1)
    assert err.startswith(f"Failed to open {tmp_path}/no/such/dir.conf for save:")
