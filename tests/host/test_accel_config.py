"""Debian's unmodified accel-config (3.5.3) against siovd through siov-run: it lists and
configures the emulated device as on a host with the idxd driver, including its failures and
their messages, and the view keeps the kernel's sysfs store semantics.

The tests of this module share one daemon and run in order; each leaves the device in a state
the next one names (the runner's configuration, or the daemon's default).
"""

from __future__ import annotations

import json
import os

from siov import BlockingClient
from siov_host.tree import op_cap_number
from tests.host.conftest import CONFIG1, HostDaemon

RESET = f"accel-config disable-device dsa0 >/dev/null; accel-config load-config -c {CONFIG1} -e"


def _ok(host: HostDaemon, script: str) -> str:
    out = host.run(script)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_list_shows_the_default_device(host_daemon: HostDaemon) -> None:
    devices = json.loads(_ok(host_daemon, "accel-config list"))
    (dsa0,) = devices
    assert dsa0["dev"] == "dsa0" and dsa0["state"] == "enabled"
    with BlockingClient(host_daemon.path) as client:
        number = op_cap_number(client.accel_list()[0]["op_cap"])
    words = [(number >> (64 * i)) & (2**64 - 1) for i in range(4)]
    bitmap = ",".join(f"{(number >> (32 * i)) & 0xFFFFFFFF:08x}" for i in range(7, -1, -1))
    # 3.5.3 parses the old four-word op_cap (and prints each with %#lx): the view served that
    # format to it
    assert dsa0["op_cap"] == [f"{w:#x}" if w else "0" for w in words]
    wqs = {w["dev"]: w for g in dsa0["groups"] for w in g.get("grouped_workqueues", [])}
    assert wqs["wq0.0"]["mode"] == "dedicated" and wqs["wq0.1"]["mode"] == "shared"
    # a reader without libaccel-config gets what this machine's kernel prints (the bitmap)
    text = _ok(host_daemon, "cat /sys/bus/dsa/devices/dsa0/op_cap")
    assert text == bitmap + "\n"


def test_list_i_reads_every_attribute(host_daemon: HostDaemon) -> None:
    devices = json.loads(_ok(host_daemon, "accel-config list -i"))
    wq = devices[0]["groups"][0]["grouped_workqueues"][0]
    assert {"dev", "mode", "size", "state", "threshold", "priority"} <= set(wq)
    with BlockingClient(host_daemon.path) as client:
        model = client.accel_list()[0]
    assert devices[0]["ims_size"] == model.get("ims_size", 2048)
    assert devices[0]["cdev_major"] == model.get("cdev_major", devices[0]["cdev_major"]) > 0


def test_load_config_enable_and_save_config(host_daemon: HostDaemon, tmp_path: str) -> None:
    saved = os.path.join(str(tmp_path), "saved.json")
    out = _ok(host_daemon, f"{RESET} && accel-config save-config -s {saved} && ls /dev/dsa")
    assert "Enabling device dsa0" in out and "Enabling wq wq0.0" in out
    assert out.split()[-2:] == ["wq0.0", "wq0.1"]
    with open(saved) as fh:
        config = json.load(fh)
    wqs = {w["dev"]: w for g in config[0]["groups"] for w in g.get("grouped_workqueues", [])}
    # 2g2q_user_1.conf: wq0.0 shared size 16 threshold 15, wq0.1 dedicated size 16
    assert (wqs["wq0.0"]["mode"], wqs["wq0.0"]["size"], wqs["wq0.0"]["threshold"]) == (
        "shared",
        16,
        15,
    )
    assert (wqs["wq0.1"]["mode"], wqs["wq0.1"]["size"]) == ("dedicated", 16)
    state = _ok(host_daemon, "cat /sys/bus/dsa/devices/wq0.0/state /sys/bus/dsa/devices/dsa0/state")
    assert state == "enabled\nenabled\n"


def test_failures_print_what_the_kernel_makes_them_print(host_daemon: HostDaemon) -> None:
    out = host_daemon.run("accel-config config-wq dsa0/wq0.0 --wq-size=8")
    assert out.returncode == 1
    assert "wq0.0: size attribute write failed: Operation not permitted" in out.stderr
    out = host_daemon.run("accel-config enable-device dsa0")
    assert out.returncode == 1
    assert "dsa0 is in enabled state already, skipping..." in out.stderr + out.stdout
    out = host_daemon.run("accel-config enable-wq dsa0/wq0.1")
    assert out.returncode == 1 and "enabled 0 wq(s) out of 1" in out.stderr + out.stdout
    out = host_daemon.run("accel-config disable-wq dsa0/wq0.3")
    assert out.returncode == 1 and "disabled mode already" in out.stderr + out.stdout
    out = host_daemon.run(f"accel-config load-config -c {CONFIG1}")
    assert "dsa0 is active. Skipping..." in out.stderr + out.stdout
    out = host_daemon.run("accel-config config-engine dsa0/engine0.1 --group-id=1")
    assert out.returncode == 1
    assert "engine0.1: group_id attribute write failed: Operation not permitted" in out.stderr


def test_config_commands_on_a_disabled_device(host_daemon: HostDaemon) -> None:
    script = (
        "accel-config disable-device dsa0 && "
        "accel-config config-device dsa0 --read-buffer-limit=10 && "
        "accel-config config-group dsa0/group0.1 --read-buffers-reserved=2 && "
        "accel-config config-engine dsa0/engine0.3 --group-id=1 && "
        "accel-config config-wq dsa0/wq0.2 --group-id=1 --wq-size=8 --type=user "
        "--name=app --driver-name=user --mode=dedicated --priority=4 && "
        "accel-config enable-device dsa0 && accel-config enable-wq dsa0/wq0.2 && "
        "cd /sys/bus/dsa/devices && cat dsa0/read_buffer_limit group0.1/read_buffers_reserved "
        "engine0.3/group_id wq0.2/size wq0.2/priority wq0.2/state group0.1/work_queues && "
        "readlink wq0.2/driver && ls /dev/dsa"
    )
    out = _ok(host_daemon, script)
    lines = out.splitlines()
    # the runner's config put wq0.1 in group 1 already; disabling the device disabled the
    # other WQs, so /dev/dsa holds wq0.2 alone
    assert lines[-9:] == [
        "10",
        "2",
        "1",
        "8",
        "4",
        "enabled",
        "wq0.1 wq0.2",
        "../../../drivers/user",
        "wq0.2",
    ]
    # size needs the whole device disabled (sysfs.c wq_size_store: EPERM), and a size over
    # the device's total is EINVAL
    out = host_daemon.run(
        "accel-config disable-wq dsa0/wq0.2 && accel-config config-wq dsa0/wq0.2 --wq-size=4"
    )
    assert out.returncode == 1
    assert "wq0.2: size attribute write failed: Operation not permitted" in out.stderr
    out = host_daemon.run(
        "accel-config disable-device dsa0 && accel-config config-wq dsa0/wq0.2 --wq-size=128"
    )
    assert out.returncode == 1
    assert "wq0.2: size attribute write failed: Invalid argument" in out.stderr
    _ok(host_daemon, RESET)


def test_sysfs_store_semantics(host_daemon: HostDaemon) -> None:
    base = "/sys/bus/dsa/devices"
    script = (
        f"accel-config disable-wq dsa0/wq0.1 >/dev/null && "
        f"printf 10 > {base}/wq0.1/priority && printf 5 > {base}/wq0.1/priority && "
        f"cat {base}/wq0.1/priority; "
        f"printf 1 > {base}/dsa0/max_groups; echo ro=$?; "
        f"cat {base}/wq0.1/cdev_minor; echo minor=$?; "
        f"printf bogus > {base}/wq0.1/mode; echo mode=$?; "
        f"printf wq0.1 > /sys/bus/dsa/drivers/user/bind && cat {base}/wq0.1/state && "
        f"cat {base}/wq0.1/cdev_minor; printf wq0.1 > /sys/bus/dsa/drivers/user/bind; "
        f"echo again=$?; printf wq0.9 > /sys/bus/dsa/drivers/user/bind; echo none=$?"
    )
    out = host_daemon.run(script)
    lines = out.stdout.splitlines()
    # a store replaces the value (no "50"), a read-only attribute is EACCES even for root,
    # cdev_minor of a WQ without a char device is ENXIO, a bad mode EINVAL, binding a bound
    # WQ EBUSY and an unknown name ENODEV (drivers/base/bus.c)
    assert lines == ["5", "ro=1", "minor=1", "mode=1", "enabled", "1", "again=1", "none=1"]
    err = out.stderr
    assert "Permission denied" in err
    assert "No such device or address" in err
    assert "Invalid argument" in err
    assert "Device or resource busy" in err
    assert "No such device" in err


def test_real_entries_stay_visible_and_the_host_is_untouched(host_daemon: HostDaemon) -> None:
    before = os.path.exists("/sys/bus/dsa"), os.path.exists("/dev/dsa")
    out = _ok(
        host_daemon,
        "ls -d /sys/bus/dsa /sys/bus/platform /sys/module/idxd /dev/dsa && "
        "echo hi > /dev/null && ls /dev/pts >/dev/null && echo fine",
    )
    assert out.splitlines()[-1] == "fine"
    assert (os.path.exists("/sys/bus/dsa"), os.path.exists("/dev/dsa")) == before
    if not before[0]:
        assert not os.path.exists("/sys/module/idxd")
