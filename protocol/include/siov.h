/* SPDX-License-Identifier: MIT */
/*
 * siov.h - the siov protocol for C clients (protocol/SPEC.md is the normative text).
 *
 * Everything a client needs besides <linux/idxd.h> (descriptor, completion record, opcodes,
 * the common flag bits, status codes) and a msgpack library: the frame header, the command
 * and event numbers, capability and feature names, the constants of the replies, the DSA
 * flag bits siov gives meaning to beyond <linux/idxd.h>, and the vfio numbers it reuses (so
 * <linux/vfio.h> is not needed either). tests/unit/test_c_header.py checks every SIOV_
 * definition here against siov_protocol and compiles this file.
 *
 * Errors: a reply with SIOV_FLAG_ERROR carries a positive Linux errno in `error` and a body
 * {"message": str}; use <errno.h> names (EINVAL, ENOENT, EOPNOTSUPP, ...). SPEC.md §5 and
 * each command's table in §8 say which errno means what.
 */
#ifndef SIOV_H
#define SIOV_H

#include <stdint.h>

/* ---- version (SPEC §6) ---------------------------------------------------------------- */
#define SIOV_PROTOCOL_MAJOR 1
#define SIOV_PROTOCOL_MINOR 0

/* ---- the 16-byte header (SPEC §2), little-endian on the wire --------------------------- */
struct siov_header {
	uint16_t msg_id;  /* chosen by the sender of a command, echoed in its reply */
	uint16_t command; /* SIOV_CMD_* */
	uint32_t size;    /* the whole message: header + msgpack body */
	uint32_t flags;   /* SIOV_TYPE_* | SIOV_FLAG_* */
	uint32_t error;   /* errno, when flags has SIOV_FLAG_ERROR */
} __attribute__((packed));

#define SIOV_HEADER_SIZE   16
#define SIOV_TYPE_MASK     0x0F
#define SIOV_TYPE_COMMAND  0x0
#define SIOV_TYPE_REPLY    0x1
#define SIOV_FLAG_NO_REPLY 0x10
#define SIOV_FLAG_ERROR    0x20

/* ---- command numbers (SPEC §8); 1-10 keep vfio-user's meaning ---------------------------- */
/* Events (SPEC §7) are numbered from SIOV_EVENT_BASE, sent by the daemon with NO_REPLY. */
#define SIOV_EVENT_BASE 0x200
#define SIOV_CMD_VERSION                  0x001
#define SIOV_CMD_DEVICE_GET_INFO          0x004
#define SIOV_CMD_DEVICE_GET_REGION_INFO   0x005
#define SIOV_CMD_DEVICE_SET_IRQS          0x008
#define SIOV_CMD_REGION_READ              0x009
#define SIOV_CMD_REGION_WRITE             0x00A
#define SIOV_CMD_PING                     0x100
#define SIOV_CMD_INFO                     0x101
#define SIOV_CMD_STATS                    0x102
#define SIOV_CMD_AUTH                     0x103
#define SIOV_CMD_MEM_REGISTER             0x110
#define SIOV_CMD_MEM_UNREGISTER           0x111
#define SIOV_CMD_MEM_LIST                 0x112
#define SIOV_CMD_TYPES_LIST               0x120
#define SIOV_CMD_MDEV_CREATE              0x121
#define SIOV_CMD_MDEV_REMOVE              0x122
#define SIOV_CMD_MDEV_LIST                0x123
#define SIOV_CMD_BUS_REGISTER_DEVICE      0x124
#define SIOV_CMD_BUS_UNREGISTER_DEVICE    0x125
#define SIOV_CMD_DEVICE_CLAIM             0x126
#define SIOV_CMD_GROUP_INFO               0x127
#define SIOV_CMD_GROUP_LIST               0x128
#define SIOV_CMD_DOMAIN_ALLOC             0x130
#define SIOV_CMD_DOMAIN_FREE              0x131
#define SIOV_CMD_DOMAIN_LIST              0x132
#define SIOV_CMD_ATTACH_DEVICE            0x133
#define SIOV_CMD_DETACH_DEVICE            0x134
#define SIOV_CMD_ATTACH_PASID             0x135
#define SIOV_CMD_REPLACE_PASID            0x136
#define SIOV_CMD_DETACH_PASID             0x137
#define SIOV_CMD_MAP                      0x138
#define SIOV_CMD_UNMAP                    0x139
#define SIOV_CMD_IOVA_TO_PHYS             0x13A
#define SIOV_CMD_DIRTY_BITMAP             0x13B
#define SIOV_CMD_IOTLB_INVALIDATE         0x13C
#define SIOV_CMD_PAGE_RESPONSE            0x13D
#define SIOV_CMD_DMA_READ                 0x140
#define SIOV_CMD_DMA_WRITE                0x141
#define SIOV_CMD_TRANSLATE                0x142
#define SIOV_CMD_ACCEL_LIST               0x150
#define SIOV_CMD_ACCEL_CONFIG_DEVICE      0x151
#define SIOV_CMD_ACCEL_CONFIG_GROUP       0x152
#define SIOV_CMD_ACCEL_CONFIG_ENGINE      0x153
#define SIOV_CMD_ACCEL_CONFIG_WQ          0x154
#define SIOV_CMD_ACCEL_ENABLE_DEVICE      0x155
#define SIOV_CMD_ACCEL_DISABLE_DEVICE     0x156
#define SIOV_CMD_ACCEL_ENABLE_WQ          0x157
#define SIOV_CMD_ACCEL_DISABLE_WQ         0x158
#define SIOV_CMD_ACCEL_LOAD_CONFIG        0x159
#define SIOV_CMD_ACCEL_SAVE_CONFIG        0x15A
#define SIOV_CMD_SUBMIT                   0x15B
#define SIOV_CMD_MDEV_DEFINE              0x160
#define SIOV_CMD_MDEV_UNDEFINE            0x161
#define SIOV_CMD_MDEV_START               0x162
#define SIOV_CMD_MDEV_STOP                0x163
#define SIOV_CMD_MDEV_LIST_DEFINED        0x164
#define SIOV_CMD_MDEV_SET_ATTRS           0x1B0
#define SIOV_CMD_SVA_BIND                 0x170
#define SIOV_CMD_SVA_UNBIND               0x171
#define SIOV_CMD_WQ_OPEN                  0x172
#define SIOV_CMD_WQ_SUBMIT                0x173
#define SIOV_CMD_WQ_CLOSE                 0x174
#define SIOV_CMD_VFIO_USER_EXPOSE         0x180
#define SIOV_CMD_VFIO_USER_UNEXPOSE       0x181
#define SIOV_CMD_ACCEL_EVL_READ           0x190
#define SIOV_CMD_DEVICE_RESV_REGIONS      0x1C0
#define SIOV_CMD_DEVICE_RESV_ADD          0x1C1
#define SIOV_CMD_IOVA_RANGES              0x1C2
#define SIOV_CMD_ALLOW_IOVAS              0x1C3
#define SIOV_CMD_SET_DIRTY_TRACKING       0x1C4
#define SIOV_CMD_GET_DIRTY_BITMAP         0x1C5
#define SIOV_CMD_GET_HW_INFO              0x1C6
#define SIOV_CMD_UNMAP_DIRTY              0x1C7
#define SIOV_CMD_PAGE_REQUEST             0x1C8
#define SIOV_CMD_TRIGGER_IOPF             0x1C9
#define SIOV_CMD_NESTED_ALLOC             0x1CA
#define SIOV_CMD_HWPT_INVALIDATE          0x1CB
#define SIOV_CMD_ATS_INVALIDATE_DONE      0x1D0
#define SIOV_CMD_IR_TABLE_SET             0x1D8 /* interrupt remapping, SPEC §8.22 */
#define SIOV_CMD_IR_SET_ENTRY             0x1D9
#define SIOV_CMD_IR_CLEAR_ENTRY           0x1DA
#define SIOV_CMD_IR_INVALIDATE_IEC        0x1DB
#define SIOV_CMD_DEVICE_SET_MSI_REMAP     0x1DC
#define SIOV_CMD_IOTLB_ENTRIES            0x1E0
#define SIOV_CMD_EVENT_FAULT              0x200
#define SIOV_CMD_EVENT_PAGE_REQUEST       0x201
#define SIOV_CMD_EVENT_IRQ                0x202
#define SIOV_CMD_EVENT_DEVICE_REMOVED     0x203
#define SIOV_CMD_EVENT_SHUTDOWN           0x204
#define SIOV_CMD_EVENT_DEVICE_OWNER       0x205
#define SIOV_CMD_EVENT_EVL                0x230
#define SIOV_CMD_EVENT_ATS_INVALIDATE     0x240

/* ---- capabilities and features (SPEC §6, §6.1): keys of VERSION's `capabilities` ------- */
#define SIOV_CAP_MAX_MSG_SIZE "max_msg_size"
#define SIOV_CAP_MAX_FDS      "max_fds"
#define SIOV_CAP_PAGE_SIZES   "page_sizes"
#define SIOV_CAP_FEATURES     "features"
#define SIOV_DEFAULT_MAX_MSG_SIZE 1048576
#define SIOV_MIN_MAX_MSG_SIZE     4096
#define SIOV_MAX_MAX_MSG_SIZE     67108864
#define SIOV_DEFAULT_MAX_FDS      8
#define SIOV_MAX_MAX_FDS          253
/* An absent `features` asks for all of them, an empty array for none. */
#define SIOV_FEATURE_EVENTS    "events"    /* any event at all */
#define SIOV_FEATURE_FD_MEMORY "fd-memory" /* MEM_REGISTER, MEM_UNREGISTER, MEM_LIST */
#define SIOV_FEATURE_DMA       "dma"       /* DMA_READ, DMA_WRITE, TRANSLATE */
#define SIOV_FEATURE_DSA       "dsa"       /* accelerator mdevs and commands, IRQ/page-request events */
#define SIOV_FEATURE_SVA       "sva"       /* SVA_BIND/UNBIND, WQ_OPEN/SUBMIT/CLOSE */

/* ---- auth (SPEC §8.9): sign SIOV_AUTH_CONTEXT (13 bytes, with its NUL) + nonce + key ---- */
#define SIOV_AUTH_CONTEXT      "siov-auth-v1"
#define SIOV_AUTH_CONTEXT_SIZE 13
#define SIOV_NONCE_SIZE        32
#define SIOV_PUBLIC_KEY_SIZE   32
#define SIOV_SIGNATURE_SIZE    64

/* ---- IOMMU (SPEC §8.5-§8.8) ---------------------------------------------------------------- */
#define SIOV_PROT_READ  1 /* MAP `prot`, TRANSLATE run `prot` */
#define SIOV_PROT_WRITE 2
#define SIOV_PASID_BITS 20
/* EVENT_FAULT `reason` (VT-d scalable-mode numbering) */
#define SIOV_FAULT_PASID_NOT_PRESENT 0x59
#define SIOV_FAULT_FS_ACCESS         0x70
#define SIOV_FAULT_FS_NOT_PRESENT    0x71
#define SIOV_FAULT_FS_RESERVED       0x72
#define SIOV_FAULT_NON_CANONICAL     0x80
#define SIOV_FAULT_US_PRIVILEGE      0x81
#define SIOV_FAULT_WRITE             0x85
#define SIOV_FAULT_AD_UPDATE         0x91
/* interrupt remapping (SPEC §8.22; QEMU's VTD_FR_IR_*) */
#define SIOV_FAULT_IR_REQ_RSVD       0x20
#define SIOV_FAULT_IR_INDEX_OVER     0x21
#define SIOV_FAULT_IR_ENTRY_P        0x22
#define SIOV_FAULT_IR_ROOT_INVAL     0x23
#define SIOV_FAULT_IR_IRTE_RSVD      0x24
#define SIOV_FAULT_IR_REQ_COMPAT     0x25
#define SIOV_FAULT_IR_SID_ERR        0x26

/* ---- accelerator (SPEC §8.12) ------------------------------------------------------------- */
#define SIOV_SUBMIT_MAX_DESCRIPTORS 4096
#define SIOV_SUBMIT_ACCEPTED 0 /* SUBMIT `results`, one byte per descriptor */
#define SIOV_SUBMIT_RETRY    1 /* shared WQ full: submit it again */
#define SIOV_SUBMIT_DROPPED  2 /* dedicated WQ full: lost, never completes */
#define SIOV_PAGE_RESP_SUCCESS 0 /* PAGE_RESPONSE `code` */
#define SIOV_PAGE_RESP_INVALID 1
#define SIOV_PAGE_RESP_FAILURE 2
#define SIOV_MSIX_VECTORS    2 /* vector 0: software errors; 1: completions */
#define SIOV_BAR0_SIZE       4096
#define SIOV_BAR2_SIZE       16384
/* DSA operation-specific flag bits (descriptor flags 23:16) siov executes; <linux/idxd.h>
 * defines these bit values only under IAX names, with another meaning. */
#define SIOV_DSA_FLAG_READ_CRC_SEED      0x010000 /* CRCGEN/COPY_CRC: seed from seed_addr */
#define SIOV_DSA_FLAG_BYPASS_CRC_INV_REF 0x020000 /* CRC: no inversion; seed/result bit-reversed */
#define SIOV_DSA_FLAG_BYPASS_DATA_REF    0x040000 /* CRC: data bytes taken MSB-first */
#define SIOV_DSA_FLAG_DEST2_STS          0x010000 /* DUALCAST: dest2 steering tag (accepted) */
#define SIOV_DSA_FLAG_RDBACK_ADDR1       0x010000 /* DRAIN: read back rdback_addr */
#define SIOV_DSA_FLAG_RDBACK_ADDR2       0x020000 /* DRAIN: read back rdback_addr2 */
#define SIOV_DSA_FLAG_FILL_16B           0x010000 /* MEMFILL: 16-byte pattern (pattern_upper) */
#define SIOV_DSA_FLAG_COMMON_MASK        0xFFBF   /* the common flag bits a descriptor may set */
#define SIOV_DSA_FLAG_OPSPEC_MASK        0xFF0000

/* ---- the vfio numbers siov reuses (values of <linux/vfio.h>) -------------------------------- */
#define SIOV_VFIO_DEVICE_FLAGS_RESET      0x1
#define SIOV_VFIO_DEVICE_FLAGS_PCI        0x2
#define SIOV_VFIO_REGION_INFO_FLAG_READ   0x1
#define SIOV_VFIO_REGION_INFO_FLAG_WRITE  0x2
#define SIOV_VFIO_REGION_INFO_FLAG_MMAP   0x4
#define SIOV_VFIO_PCI_BAR0_REGION_INDEX   0
#define SIOV_VFIO_PCI_BAR2_REGION_INDEX   2
#define SIOV_VFIO_PCI_NUM_REGIONS         9
#define SIOV_VFIO_PCI_INTX_IRQ_INDEX      0
#define SIOV_VFIO_PCI_MSI_IRQ_INDEX       1
#define SIOV_VFIO_PCI_MSIX_IRQ_INDEX      2
#define SIOV_VFIO_PCI_ERR_IRQ_INDEX       3
#define SIOV_VFIO_PCI_REQ_IRQ_INDEX       4
#define SIOV_VFIO_PCI_NUM_IRQS            5
#define SIOV_VFIO_IRQ_SET_DATA_NONE       0x01
#define SIOV_VFIO_IRQ_SET_DATA_BOOL       0x02
#define SIOV_VFIO_IRQ_SET_DATA_EVENTFD    0x04
#define SIOV_VFIO_IRQ_SET_ACTION_MASK     0x08
#define SIOV_VFIO_IRQ_SET_ACTION_UNMASK   0x10
#define SIOV_VFIO_IRQ_SET_ACTION_TRIGGER  0x20

#endif /* SIOV_H */
