"""Command numbers on the wire.

The low numbers keep vfio-user's ids where siov's command means the same thing (VERSION, the
device region and IRQ commands). siov's own commands live from 0x100, grouped by area, and
daemon-initiated events from 0x200. Numbers are stable: a number, once used, is never reused.
"""

from __future__ import annotations

import enum


class Command(enum.IntEnum):
    # vfio-user numbering (qemu docs/interop/vfio-user.rst)
    VERSION = 1
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10

    # core
    PING = 0x100
    INFO = 0x101
    STATS = 0x102
    AUTH = 0x103

    # memory
    MEM_REGISTER = 0x110
    MEM_UNREGISTER = 0x111
    MEM_LIST = 0x112

    # mdev bus and groups
    TYPES_LIST = 0x120
    MDEV_CREATE = 0x121
    MDEV_REMOVE = 0x122
    MDEV_LIST = 0x123
    BUS_REGISTER_DEVICE = 0x124
    BUS_UNREGISTER_DEVICE = 0x125
    DEVICE_CLAIM = 0x126
    GROUP_INFO = 0x127
    GROUP_LIST = 0x128

    # iommu
    DOMAIN_ALLOC = 0x130
    DOMAIN_FREE = 0x131
    DOMAIN_LIST = 0x132
    ATTACH_DEVICE = 0x133
    DETACH_DEVICE = 0x134
    ATTACH_PASID = 0x135
    REPLACE_PASID = 0x136
    DETACH_PASID = 0x137
    MAP = 0x138
    UNMAP = 0x139
    IOVA_TO_PHYS = 0x13A
    DIRTY_BITMAP = 0x13B
    IOTLB_INVALIDATE = 0x13C
    PAGE_RESPONSE = 0x13D

    # external emulators: DMA through the IOMMU
    DMA_READ = 0x140
    DMA_WRITE = 0x141
    TRANSLATE = 0x142
    IOTLB_ENTRIES = 0x1E0  # entry-level IOTLB inspection, per domain and PASID

    # accelerator
    ACCEL_LIST = 0x150
    ACCEL_CONFIG_DEVICE = 0x151
    ACCEL_CONFIG_GROUP = 0x152
    ACCEL_CONFIG_ENGINE = 0x153
    ACCEL_CONFIG_WQ = 0x154
    ACCEL_ENABLE_DEVICE = 0x155
    ACCEL_DISABLE_DEVICE = 0x156
    ACCEL_ENABLE_WQ = 0x157
    ACCEL_DISABLE_WQ = 0x158
    ACCEL_LOAD_CONFIG = 0x159
    ACCEL_SAVE_CONFIG = 0x15A
    SUBMIT = 0x15B
    ACCEL_EVL_READ = 0x190  # the DSA 2.0 event log

    # persistent mdev definitions (mdevctl style)
    MDEV_DEFINE = 0x160
    MDEV_UNDEFINE = 0x161
    MDEV_START = 0x162
    MDEV_STOP = 0x163
    MDEV_LIST_DEFINED = 0x164
    MDEV_SET_ATTRS = 0x1B0

    # SVA and the user WQ char device (0x170-0x17F)
    SVA_BIND = 0x170
    SVA_UNBIND = 0x171
    WQ_OPEN = 0x172
    WQ_SUBMIT = 0x173
    WQ_CLOSE = 0x174

    # real vfio-user endpoints for mdevs (siov_protocol.vfio_user)
    VFIO_USER_EXPOSE = 0x180
    VFIO_USER_UNEXPOSE = 0x181

    # iommu extensions (issue 17): reserved regions and IOVA ranges, dirty tracking, hw info
    DEVICE_RESV_REGIONS = 0x1C0
    DEVICE_RESV_ADD = 0x1C1
    IOVA_RANGES = 0x1C2
    ALLOW_IOVAS = 0x1C3
    SET_DIRTY_TRACKING = 0x1C4
    GET_DIRTY_BITMAP = 0x1C5
    GET_HW_INFO = 0x1C6
    UNMAP_DIRTY = 0x1C7
    PAGE_REQUEST = 0x1C8
    TRIGGER_IOPF = 0x1C9
    NESTED_ALLOC = 0x1CA
    HWPT_INVALIDATE = 0x1CB
    ATS_INVALIDATE_DONE = 0x1D0  # a device dropped what an EVENT_ATS_INVALIDATE named
    # interrupt remapping (issue 17 part 7, SPEC §8.22)
    IR_TABLE_SET = 0x1D8
    IR_SET_ENTRY = 0x1D9
    IR_CLEAR_ENTRY = 0x1DA
    IR_INVALIDATE_IEC = 0x1DB
    DEVICE_SET_MSI_REMAP = 0x1DC

    # events: daemon -> client, sent as commands with the no-reply flag
    EVENT_FAULT = 0x200
    EVENT_PAGE_REQUEST = 0x201
    EVENT_IRQ = 0x202
    EVENT_DEVICE_REMOVED = 0x203
    EVENT_SHUTDOWN = 0x204
    EVENT_DEVICE_OWNER = 0x205  # to a registrant: its device was claimed or released
    EVENT_EVL = 0x230  # an entry was written to an event log a session armed
    EVENT_ATS_INVALIDATE = 0x240  # to an emulator: drop cached translations (device TLB)


EVENT_BASE = 0x200


def is_event(command: int) -> bool:
    """Events are the daemon's own messages; a client never sends one."""
    return command >= EVENT_BASE
