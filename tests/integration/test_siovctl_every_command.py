"""Every siovctl subcommand, run against a daemon in which another client holds objects (an
mdev on its own domain with a mapping, a PASID attach, an emulator's claimed device): each one
succeeds and shows the other client's objects where it lists them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import pytest

import siov
from siov import cli
from tests.conftest import DaemonProcess
from tests.daemonproc import spawn_siovd

MiB = 1 << 20


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


def test_every_subcommand_sees_another_clients_objects(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    def run(*args: str, json_out: bool = False) -> str:
        capsys.readouterr()
        # global options after the subcommand (accel: after "accel", before its action)
        opts = ["--socket", daemon.path, *(["--json"] if json_out else [])]
        argv = [args[0], *opts, *args[1:]] if args[0] == "accel" else [*args, *opts]
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, (args, out, err)
        return out

    with (
        siov.BlockingClient(daemon.path, name="other") as other,
        siov.BlockingClient(daemon.path, name="emu") as emu,
    ):
        mdev = other.create_dsa_mdev("dsa-1swq")
        dom = other.alloc_domain()
        other.attach_device(dom, mdev)
        buf = other.alloc(2 * MiB)
        other.map(mdev, buf.phys, 2 * MiB, iova=0)
        pasid_dom = other.alloc_domain()
        other.attach_pasid(pasid_dom, mdev, 5)
        dev = emu.register_device("emu")
        other.claim_device(dev, dev.token)
        seen: set[str] = set()

        def did(name: str, *args: str, json_out: bool = False) -> str:
            seen.add(name)
            return run(name, *args, json_out=json_out)

        assert '"pid"' in did("info", json_out=True)
        did("ping", "-c", "2")
        assert "session" in did("stats")
        assert "dsa-1dwq" in did("types")
        assert mdev.uuid in did("list")  # another client's mdev, without --all
        groups = json.loads(did("groups", json_out=True))
        assert {mdev.uuid, dev.uuid} <= {d for g in groups for d in g["devices"]}
        domains = json.loads(did("domains", json_out=True))
        mine = next(d for d in domains if d["domain_id"] == dom.id)
        for key in ("areas", "pasids", "pt_root_phys", "default_of_group"):
            assert key in mine
        assert mine["areas"] == 1
        table = run("domains")
        assert "AREAS" in table and "PASIDS" in table
        assert "iotlb_hits" in did("iotlb")
        out = did("translate", mdev.uuid, "0x1000", "--pasid", "0")
        assert hex(buf.phys + 0x1000) in out
        assert "PAGE" in out and "2M" in out  # the run's leaf: one 2 MiB page
        leaf = other.iova_leaf(mdev, 0x1000)  # the blocking client has the same methods
        assert (leaf.phys, leaf.page_size) == (buf.phys + 0x1000, 2 * MiB)
        assert [e.page_size for e in other.iotlb_entries(dom)] == [2 * MiB]
        # the translation left an entry in the IOTLB: listed per domain and per PASID
        entries = json.loads(run("iotlb", "--domain", str(dom.domain_id), json_out=True))
        assert [(e["pasid"], e["iova"], e["page_size"]) for e in entries] == [
            (mdev.default_pasid, 0, 2 * MiB)
        ]
        assert entries[0]["phys"] == buf.phys and entries[0]["hits"] == 0  # cached by a miss
        table = run("iotlb", "--domain", str(dom.domain_id), "--pasid", str(mdev.default_pasid))
        assert "2M" in table and hex(buf.phys) in table
        assert "(none)" in run("iotlb", "--domain", str(dom.domain_id), "--pasid", "5")
        fault = did("translate", mdev.uuid, str(4 * MiB))
        assert "FAULT reason 0x71 (first-stage entry not present)" in fault
        created = json.loads(did("create", "-p", "dsa0", "-t", "dsa-1dwq", json_out=True))
        assert created["type_id"] == "dsa-1dwq"  # gone with siovctl's connection
        created = json.loads(run("create", "dsa0", "dsa-1dwq", json_out=True))
        # remove: an mdev siovctl's own connection made lives only as long as it, so removing
        # another client's mdev is what a user tries; it is refused as not theirs.
        capsys.readouterr()
        assert cli.main(["remove", mdev.uuid, "--socket", daemon.path]) == 1
        assert "ENOENT" in capsys.readouterr().err
        seen.add("remove")
        defined = json.loads(did("define", "-p", "siov_test", "-t", "siov_test-1", json_out=True))
        uuid = defined["uuid"]
        did("modify", "-u", uuid, "--auto")
        did("start", "-u", uuid)
        did("stop", "-u", uuid)
        did("undefine", "-u", uuid)
        # IOMMU extensions (SPEC §8.16, §8.18), on another client's device and domain
        regions = json.loads(did("resv-regions", mdev.uuid, json_out=True))
        assert {"start": 0xFEE00000, "last": 0xFEEFFFFF, "type": "msi"} in regions
        ranges = json.loads(did("iova-ranges", str(dom.domain_id), json_out=True))
        assert ranges and all(r["last"] < 0xFEE00000 or r["start"] > 0xFEEFFFFF for r in ranges)
        assert "ecap_reg" in did("hw-info", mdev.uuid)
        assert "dsa0" in did("accel", "list")
        assert '"mdevs"' not in run("accel", "list")  # accel-config's keys only, by default
        listing = run("accel", "list", "--siov")
        # each enabled WQ says which mdevs use it, with their PASIDs (default first, then
        # per-PASID attaches) and the dedicated-WQ drops
        wqs = [
            wq
            for dev in json.loads(listing)
            for group in dev.get("groups", [])
            for wq in group.get("grouped_workqueues", [])
        ]
        users = [(wq["dev"], u) for wq in wqs for u in wq.get("mdevs", [])]
        assert [(u["uuid"], u["pasids"]) for _, u in users if u["uuid"] == mdev.uuid] == [
            (mdev.uuid, [mdev.default_pasid, 5])
        ]
        assert all("dropped" in wq for wq in wqs if wq["state"] == "enabled")
        key = os.path.join(str(tmp_path), "k")
        did("keygen", key)
        assert os.path.exists(key + ".pub")
        # vfio-user serves until interrupted: its refusal path runs here (a shared-WQ type
        # cannot be served), the serving path in tests/integration/test_vfio_user.py.
        capsys.readouterr()
        sock = os.path.join(str(tmp_path), "vu.sock")
        assert cli.main(["vfio-user", sock, "-p", "nosuch", "--socket", daemon.path]) == 1
        assert "siovctl: vfio-user:" in capsys.readouterr().err
        seen.add("vfio-user")
        assert seen == set(cli.COMMANDS)
        # the other client's objects are untouched
        assert other.iova_to_phys(mdev, 0) == buf.phys
        assert {d.uuid for d in other.devices()} == {mdev.uuid, dev.uuid}
