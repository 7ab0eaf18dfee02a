"""protocol/include/siov.h says what siov_protocol says: every SIOV_ definition in it is
checked here against the Python value it stands for, every command and feature has one, and
the header compiles next to <linux/idxd.h> with the sizes the wire needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from siov_protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, Command, auth, dsa, header, ids
from siov_protocol import messages_accel as accel
from siov_protocol.commands import EVENT_BASE
from siov_protocol.features import FEATURES
from siov_protocol.messages import Capabilities
from siov_protocol.messages_iommu import PROT_READ, PROT_WRITE
from siov_protocol.schema import decode
from siovd.model.accel import caps
from siovd.model.accel.parent import MDEV_IRQ_COUNT
from siovd.model.accel.registers import BAR0_SIZE
from siovd.model.iommu import faults, irq_remap

HEADER = Path(__file__).resolve().parents[2] / "protocol" / "include" / "siov.h"
DEFINE = re.compile(r"^#define\s+(SIOV_\w+)\s+(\S+)", re.M)


def header_defines() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in DEFINE.findall(HEADER.read_text()):
        if name == "SIOV_H":
            continue
        assert name not in out, f"{name} defined twice"
        out[name] = value.strip('"') if value.startswith('"') else int(value, 0)
    return out


def expected() -> dict[str, Any]:
    cap_defaults = decode(Capabilities, {})
    cap_fields = Capabilities.__dataclass_fields__
    want: dict[str, Any] = {
        "SIOV_PROTOCOL_MAJOR": PROTOCOL_MAJOR,
        "SIOV_PROTOCOL_MINOR": PROTOCOL_MINOR,
        "SIOV_HEADER_SIZE": header.HEADER_SIZE,
        "SIOV_TYPE_MASK": header.TYPE_MASK,
        "SIOV_TYPE_COMMAND": header.TYPE_COMMAND,
        "SIOV_TYPE_REPLY": header.TYPE_REPLY,
        "SIOV_FLAG_NO_REPLY": header.FLAG_NO_REPLY,
        "SIOV_FLAG_ERROR": header.FLAG_ERROR,
        "SIOV_EVENT_BASE": EVENT_BASE,
        "SIOV_DEFAULT_MAX_MSG_SIZE": cap_defaults.max_msg_size,
        "SIOV_MIN_MAX_MSG_SIZE": cap_fields["max_msg_size"].metadata["range"][0],
        "SIOV_MAX_MAX_MSG_SIZE": cap_fields["max_msg_size"].metadata["range"][1],
        "SIOV_DEFAULT_MAX_FDS": cap_defaults.max_fds,
        "SIOV_MAX_MAX_FDS": cap_fields["max_fds"].metadata["range"][1],
        "SIOV_AUTH_CONTEXT": auth.AUTH_CONTEXT.rstrip(b"\0").decode(),
        "SIOV_AUTH_CONTEXT_SIZE": len(auth.AUTH_CONTEXT),
        "SIOV_NONCE_SIZE": auth.NONCE_SIZE,
        "SIOV_PUBLIC_KEY_SIZE": auth.PUBLIC_KEY_SIZE,
        "SIOV_SIGNATURE_SIZE": auth.SIGNATURE_SIZE,
        "SIOV_PROT_READ": PROT_READ,
        "SIOV_PROT_WRITE": PROT_WRITE,
        "SIOV_PASID_BITS": ids.PASID_BITS,
        "SIOV_FAULT_PASID_NOT_PRESENT": faults.FR_PASID_ENTRY_NOT_PRESENT,
        "SIOV_FAULT_FS_ACCESS": faults.FR_FS_ACCESS,
        "SIOV_FAULT_FS_NOT_PRESENT": faults.FR_FS_NOT_PRESENT,
        "SIOV_FAULT_FS_RESERVED": faults.FR_FS_RESERVED,
        "SIOV_FAULT_NON_CANONICAL": faults.FR_NON_CANONICAL,
        "SIOV_FAULT_US_PRIVILEGE": faults.FR_US_PRIVILEGE,
        "SIOV_FAULT_WRITE": faults.FR_SM_WRITE,
        "SIOV_FAULT_AD_UPDATE": faults.FR_AD_UPDATE,
        "SIOV_FAULT_IR_REQ_RSVD": irq_remap.FR_IR_REQ_RSVD,
        "SIOV_FAULT_IR_INDEX_OVER": irq_remap.FR_IR_INDEX_OVER,
        "SIOV_FAULT_IR_ENTRY_P": irq_remap.FR_IR_ENTRY_P,
        "SIOV_FAULT_IR_ROOT_INVAL": irq_remap.FR_IR_ROOT_INVAL,
        "SIOV_FAULT_IR_IRTE_RSVD": irq_remap.FR_IR_IRTE_RSVD,
        "SIOV_FAULT_IR_REQ_COMPAT": irq_remap.FR_IR_REQ_COMPAT,
        "SIOV_FAULT_IR_SID_ERR": irq_remap.FR_IR_SID_ERR,
        "SIOV_SUBMIT_MAX_DESCRIPTORS": accel.SUBMIT_MAX_DESCRIPTORS,
        "SIOV_SUBMIT_ACCEPTED": accel.SUBMIT_ACCEPTED,
        "SIOV_SUBMIT_RETRY": accel.SUBMIT_RETRY,
        "SIOV_SUBMIT_DROPPED": accel.SUBMIT_DROPPED,
        "SIOV_PAGE_RESP_SUCCESS": accel.PAGE_RESP_SUCCESS,
        "SIOV_PAGE_RESP_INVALID": accel.PAGE_RESP_INVALID,
        "SIOV_PAGE_RESP_FAILURE": accel.PAGE_RESP_FAILURE,
        "SIOV_MSIX_VECTORS": MDEV_IRQ_COUNT,
        "SIOV_BAR0_SIZE": BAR0_SIZE,
        "SIOV_BAR2_SIZE": caps.PORTAL_STRIDE,
        "SIOV_DSA_FLAG_READ_CRC_SEED": dsa.IDXD_OP_FLAG_READ_CRC_SEED,
        "SIOV_DSA_FLAG_BYPASS_CRC_INV_REF": dsa.IDXD_OP_FLAG_BYPASS_CRC_INV_REF,
        "SIOV_DSA_FLAG_BYPASS_DATA_REF": dsa.IDXD_OP_FLAG_BYPASS_DATA_REF,
        "SIOV_DSA_FLAG_DEST2_STS": dsa.IDXD_OP_FLAG_DEST2_STS,
        "SIOV_DSA_FLAG_RDBACK_ADDR1": dsa.IDXD_OP_FLAG_RDBACK_ADDR1,
        "SIOV_DSA_FLAG_RDBACK_ADDR2": dsa.IDXD_OP_FLAG_RDBACK_ADDR2,
        "SIOV_DSA_FLAG_FILL_16B": dsa.IDXD_OP_FLAG_FILL_16B,
        "SIOV_DSA_FLAG_COMMON_MASK": dsa.IDXD_OP_FLAG_COMMON_MASK,
        "SIOV_DSA_FLAG_OPSPEC_MASK": dsa.IDXD_OP_FLAG_OPSPEC_MASK,
        "SIOV_VFIO_DEVICE_FLAGS_RESET": accel.DEVICE_FLAGS_RESET,
        "SIOV_VFIO_DEVICE_FLAGS_PCI": accel.DEVICE_FLAGS_PCI,
        "SIOV_VFIO_REGION_INFO_FLAG_READ": accel.REGION_FLAG_READ,
        "SIOV_VFIO_REGION_INFO_FLAG_WRITE": accel.REGION_FLAG_WRITE,
        "SIOV_VFIO_REGION_INFO_FLAG_MMAP": accel.REGION_FLAG_MMAP,
        "SIOV_VFIO_PCI_BAR0_REGION_INDEX": accel.REGION_BAR0,
        "SIOV_VFIO_PCI_BAR2_REGION_INDEX": accel.REGION_BAR2,
        "SIOV_VFIO_PCI_NUM_REGIONS": accel.NUM_REGIONS,
        "SIOV_VFIO_PCI_INTX_IRQ_INDEX": accel.IRQ_INTX,
        "SIOV_VFIO_PCI_MSI_IRQ_INDEX": accel.IRQ_MSI,
        "SIOV_VFIO_PCI_MSIX_IRQ_INDEX": accel.IRQ_MSIX,
        "SIOV_VFIO_PCI_ERR_IRQ_INDEX": accel.IRQ_ERR,
        "SIOV_VFIO_PCI_REQ_IRQ_INDEX": accel.IRQ_REQ,
        "SIOV_VFIO_PCI_NUM_IRQS": accel.NUM_IRQS,
        "SIOV_VFIO_IRQ_SET_DATA_NONE": accel.IRQ_SET_DATA_NONE,
        "SIOV_VFIO_IRQ_SET_DATA_BOOL": accel.IRQ_SET_DATA_BOOL,
        "SIOV_VFIO_IRQ_SET_DATA_EVENTFD": accel.IRQ_SET_DATA_EVENTFD,
        "SIOV_VFIO_IRQ_SET_ACTION_MASK": accel.IRQ_SET_ACTION_MASK,
        "SIOV_VFIO_IRQ_SET_ACTION_UNMASK": accel.IRQ_SET_ACTION_UNMASK,
        "SIOV_VFIO_IRQ_SET_ACTION_TRIGGER": accel.IRQ_SET_ACTION_TRIGGER,
    }
    for name in cap_fields:
        want[f"SIOV_CAP_{name.upper()}"] = name
    for feature in FEATURES:
        want["SIOV_FEATURE_" + feature.upper().replace("-", "_")] = feature
    for command in Command:
        want[f"SIOV_CMD_{command.name}"] = int(command)
    return want


def test_every_definition_matches_siov_protocol_and_nothing_is_missing() -> None:
    got, want = header_defines(), expected()
    assert sorted(set(want) - set(got)) == [], "missing from siov.h"
    assert sorted(set(got) - set(want)) == [], "in siov.h but not checked here"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert wrong == {}


def test_the_header_compiles_with_linux_idxd_h(tmp_path: Path) -> None:
    src = tmp_path / "check.c"
    src.write_text(
        "#include <linux/idxd.h>\n"
        f'#include "{HEADER}"\n'
        '_Static_assert(sizeof(struct siov_header) == SIOV_HEADER_SIZE, "header");\n'
        '_Static_assert(sizeof(struct dsa_hw_desc) == 64, "descriptor");\n'
        '_Static_assert(sizeof(struct dsa_completion_record) == 32, "record");\n'
        '_Static_assert(sizeof(SIOV_AUTH_CONTEXT) == SIOV_AUTH_CONTEXT_SIZE, "context");\n'
        "int main(void) { return 0; }\n"
    )
    done = subprocess.run(
        ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
