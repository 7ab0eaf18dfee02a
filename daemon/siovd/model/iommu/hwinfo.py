"""Hardware information: the VT-d capability registers this IOMMU would expose and the
iommufd ``IOMMU_GET_HW_INFO`` answer built from them (``struct iommu_hw_info_vtd``), so a VMM can
derive a guest view (QEMU's intel-iommu checks a host device's cap/ecap this way).

Bit positions are the VT-d specification's (§11.4.2 CAP_REG, §11.4.3 ECAP_REG), named as QEMU's
``hw/i386/intel_iommu_internal.h`` and Linux's ``drivers/iommu/intel/iommu.h`` name them. Only
what siov models is advertised: scalable mode with first-stage tables (4 and 5 levels, 2 MiB and
1 GiB pages), 20-bit PASIDs, page-selective invalidation up to ``MAX_AM``, a device TLB (DSA's),
page requests, pass-through (identity domains), dirty tracking (SLADS, as Linux's
``ssads_supported`` reads it; see model/iommu/dirty.py), nesting (NEST: model/iommu/nested.py;
its stage 2 uses the first-stage entry format). Not advertised, because siov does not model them:
second-stage-format tables (SLTS), caching mode (CM), x2APIC mode (EIM). Interrupt remapping
(model/iommu/irq_remap.py, SPEC §8.22) is a per-client table for mdev MSI-X, not the host
register interface, so IR stays clear too.
"""

from __future__ import annotations

import struct
from typing import Final

from siovd.model.iommu.invalidate import MAX_AM

# -- CAP_REG ------------------------------------------------------------------------------------
CAP_ND_64K: Final = 6  # bits 2:0, 16-bit domain ids ((16 - 4) / 2)
CAP_SAGAW_48: Final = 0x4 << 8  # 4-level
CAP_SAGAW_57: Final = 0x8 << 8  # 5-level
CAP_MGAW_SHIFT: Final = 16  # bits 21:16, width - 1
CAP_FRO_SHIFT: Final = 24  # bits 33:24, fault-recording register offset / 16
FRCD_OFFSET: Final = 0x220
CAP_SLLPS_2M: Final = 1 << 34
CAP_SLLPS_1G: Final = 1 << 35
CAP_PSI: Final = 1 << 39
CAP_NFR_SHIFT: Final = 40  # bits 47:40, fault-recording registers - 1
CAP_MAMV_SHIFT: Final = 48  # bits 53:48
CAP_DWD: Final = 1 << 54
CAP_DRD: Final = 1 << 55
CAP_FS1GP: Final = 1 << 56
CAP_FS5LP: Final = 1 << 60

# -- ECAP_REG -----------------------------------------------------------------------------------
ECAP_C: Final = 1 << 0
ECAP_QI: Final = 1 << 1
ECAP_DT: Final = 1 << 2
ECAP_IR: Final = 1 << 3
ECAP_PT: Final = 1 << 6
ECAP_SC: Final = 1 << 7
ECAP_IRO_SHIFT: Final = 8  # bits 17:8, IOTLB register offset / 16
IOTLB_OFFSET: Final = 0xF0
ECAP_MHMV: Final = 15 << 20
ECAP_NEST: Final = 1 << 26
ECAP_PRS: Final = 1 << 29
ECAP_PSS_SHIFT: Final = 35  # bits 39:35, PASID width - 1
ECAP_PASID: Final = 1 << 40
ECAP_SMTS: Final = 1 << 43
ECAP_SLADS: Final = 1 << 45
ECAP_SLTS: Final = 1 << 46
ECAP_FLTS: Final = 1 << 47

# -- iommufd -------------------------------------------------------------------------------------
IOMMU_HW_INFO_TYPE_INTEL_VTD: Final = 1
IOMMU_HW_CAP_DIRTY_TRACKING: Final = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC: Final = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV: Final = 1 << 2
#: ``struct iommu_hw_info_vtd { __u32 flags; __u32 __reserved; __aligned_u64 cap_reg;
#: __aligned_u64 ecap_reg; }``
VTD_INFO: Final = struct.Struct("<IIQQ")
MAX_DATA_LEN: Final = 4096

PASID_BITS: Final = 20
FAULT_RECORDS: Final = 8
MGAW: Final = 57


def cap_reg() -> int:
    return (
        CAP_ND_64K
        | CAP_SAGAW_48
        | CAP_SAGAW_57
        | (MGAW - 1) << CAP_MGAW_SHIFT
        | (FRCD_OFFSET >> 4) << CAP_FRO_SHIFT
        | CAP_SLLPS_2M
        | CAP_SLLPS_1G
        | CAP_PSI
        | (FAULT_RECORDS - 1) << CAP_NFR_SHIFT
        | MAX_AM << CAP_MAMV_SHIFT
        | CAP_DWD
        | CAP_DRD
        | CAP_FS1GP
        | CAP_FS5LP
    )


def ecap_reg() -> int:
    return (
        ECAP_C
        | ECAP_QI
        | ECAP_DT
        | ECAP_PT
        | ECAP_SC
        | (IOTLB_OFFSET >> 4) << ECAP_IRO_SHIFT
        | ECAP_MHMV
        | ECAP_NEST
        | ECAP_PRS
        | (PASID_BITS - 1) << ECAP_PSS_SHIFT
        | ECAP_PASID
        | ECAP_SMTS
        | ECAP_SLADS
        | ECAP_FLTS
    )


def hw_info(pasid_bits: int, data_len: int) -> dict[str, object]:
    """``IOMMU_GET_HW_INFO`` for a device of ``pasid_bits``: ``data`` is the VT-d struct cut to
    ``data_len`` bytes, or zero-filled past its 24 bytes; ``data_len`` in the answer is the
    struct's own length, as iommufd returns it."""
    cap, ecap = cap_reg(), ecap_reg()
    raw = VTD_INFO.pack(0, 0, cap, ecap)
    data = raw[:data_len] + bytes(max(0, data_len - len(raw)))
    caps = IOMMU_HW_CAP_DIRTY_TRACKING if ecap & ECAP_SLADS else 0
    return {
        "out_data_type": IOMMU_HW_INFO_TYPE_INTEL_VTD,
        "data_len": len(raw),
        "data": data,
        "flags": 0,
        "cap_reg": cap,
        "ecap_reg": ecap,
        "capabilities": caps,  # PASID exec/priv: the device's PCI PASID capability has neither
        "max_pasid_log2": min(pasid_bits, PASID_BITS),
        "decoded": decode(cap, ecap),
    }


def decode(cap: int, ecap: int) -> dict[str, object]:
    """The fields a VMM builds a guest view from, read back out of the registers."""
    sizes = [4096]
    if cap & CAP_SLLPS_2M:
        sizes.append(2 << 20)
    if cap & (CAP_FS1GP | CAP_SLLPS_1G):
        sizes.append(1 << 30)
    return {
        "mgaw": ((cap >> CAP_MGAW_SHIFT) & 0x3F) + 1,
        "first_stage_levels": [4, 5] if cap & CAP_FS5LP else [4],
        "page_sizes": sizes,
        "pasid_bits": ((ecap >> ECAP_PSS_SHIFT) & 0x1F) + 1 if ecap & ECAP_PASID else 0,
        "max_address_mask": (cap >> CAP_MAMV_SHIFT) & 0x3F,
        "fault_records": ((cap >> CAP_NFR_SHIFT) & 0xFF) + 1,
        "scalable_mode": bool(ecap & ECAP_SMTS),
        "first_stage": bool(ecap & ECAP_FLTS),
        "second_stage": bool(ecap & ECAP_SLTS),
        "nesting": bool(ecap & ECAP_NEST),
        "dirty_tracking": bool(ecap & ECAP_SLADS),
        "device_tlb": bool(ecap & ECAP_DT),
        "page_requests": bool(ecap & ECAP_PRS),
        "pass_through": bool(ecap & ECAP_PT),
        "interrupt_remapping": bool(ecap & ECAP_IR),
    }
