"""GET_HW_INFO over a real socket (iommufd ``IOMMU_GET_HW_INFO`` / ``iommu_hw_info_vtd``;
SPEC §8.18). The register bits are checked against the VT-d specification's positions written
out here, not against the daemon's own constants."""

from __future__ import annotations

import errno
import json
import struct

import pytest
import trio

import siov
from siov import cli
from siov_protocol import Command
from tests.conftest import RunningDaemon
from tests.integration.test_iommu_socket import expect


def field(value: int, hi: int, lo: int) -> int:
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


async def test_vtd_registers_describe_what_siov_models(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        info = await client.hw_info(mdev.uuid)
        assert info["out_data_type"] == 1  # IOMMU_HW_INFO_TYPE_INTEL_VTD
        assert info["data_len"] == 24
        cap, ecap = info["cap_reg"], info["ecap_reg"]
        assert struct.unpack("<IIQQ", info["data"]) == (0, 0, cap, ecap)
        # CAP_REG (VT-d 11.4.2)
        assert field(cap, 21, 16) + 1 == 57  # MGAW
        assert field(cap, 53, 48) == 18  # MAMV: IOTLB_INVALIDATE takes am up to 18
        assert cap >> 56 & 1 and cap >> 60 & 1  # FS1GP, FS5LP: 1 GiB leaves, 5 levels
        assert cap >> 34 & 1 and cap >> 39 & 1  # SLLPS 2M, PSI
        assert field(cap, 2, 0) == 6  # ND: 16-bit domain ids
        assert not cap >> 7 & 1  # CM: no caching mode
        # ECAP_REG (VT-d 11.4.3)
        assert ecap >> 43 & 1 and ecap >> 47 & 1 and ecap >> 40 & 1  # SMTS, FLTS, PASID
        assert field(ecap, 39, 35) + 1 == 20  # PSS: 20-bit PASIDs
        assert ecap >> 29 & 1 and ecap >> 2 & 1 and ecap >> 6 & 1  # PRS, DT, PT
        assert ecap >> 45 & 1  # SLADS: dirty tracking
        assert ecap >> 26 & 1  # NEST
        assert not ecap >> 3 & 1 and not ecap >> 46 & 1  # IR, SLTS
        # iommufd view
        assert info["capabilities"] == 1  # IOMMU_HW_CAP_DIRTY_TRACKING; no PASID exec/priv
        assert info["max_pasid_log2"] == 20
        decoded = info["decoded"]
        assert decoded["page_sizes"] == [4096, 2 << 20, 1 << 30]
        assert decoded["first_stage_levels"] == [4, 5]
        assert decoded["pasid_bits"] == 20 and decoded["dirty_tracking"]
        assert decoded["nesting"] and not decoded["interrupt_remapping"]
        # what it advertises holds: 5-level domains and dirty-tracking domains allocate
        await client.alloc_domain(levels=5)
        await client.alloc_domain(dirty_tracking=True)


async def test_data_len_and_pasid_width(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        full = (await client.hw_info(mdev.uuid))["data"]
        short = await client.hw_info(mdev.uuid, data_len=8)
        assert short["data"] == full[:8] and short["data_len"] == 24
        long = await client.hw_info(mdev.uuid, data_len=40)
        assert long["data"] == full + bytes(16) and long["data_len"] == 24
        assert (await client.hw_info(mdev.uuid, data_len=0))["data"] == b""
        narrow = await client.register_device("narrow", pasid_bits=8)
        assert (await client.hw_info(narrow.uuid))["max_pasid_log2"] == 8
        none = await client.register_device("nopasid", pasid_bits=0)
        assert (await client.hw_info(none.uuid))["max_pasid_log2"] == 0


async def test_hw_info_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        uuid = mdev.uuid
        body = {"device": uuid, "flags": 1}
        await expect(errno.EOPNOTSUPP, client.call(Command.GET_HW_INFO, body), "flags")
        await expect(
            errno.ERANGE, client.call(Command.GET_HW_INFO, {"device": uuid, "data_len": 4097})
        )
        await expect(errno.ENOENT, client.hw_info("00000000-0000-0000-0000-000000000000"))
        await expect(errno.EINVAL, client.call(Command.GET_HW_INFO, {}))
        assert (await client.hw_info(uuid))["data_len"] == 24  # the connection is fine


async def test_siovctl_hw_info(siovd: RunningDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        argv = ["--socket", siovd.path, "--json", "hw-info", mdev.uuid]
        rc = await trio.to_thread.run_sync(cli.main, argv)
        out = capsys.readouterr()
        assert rc == 0, out.err
        # siovctl's JSON object (indented, several lines) among the in-process daemon's logs
        lines = out.out.splitlines()
        start = lines.index("{")
        shown = json.loads("\n".join(lines[start : lines.index("}", start) + 1]))
        info = await client.hw_info(mdev.uuid)
        assert shown["cap_reg"] == info["cap_reg"] and shown["ecap_reg"] == info["ecap_reg"]
        assert shown["max_pasid_log2"] == 20 and "data" not in shown
