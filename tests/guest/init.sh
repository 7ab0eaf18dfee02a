#!/bin/sh
# /init of the guest test's initramfs (busybox). Loads siov's MOVDIR64B shim and the kernel's
# own idxd modules, configures the device through idxd's sysfs (the ABI accel-config uses),
# enables a dedicated kernel WQ bound to dmaengine, runs siov_dmacheck and powers off.
# Every line the test reads starts with "siov-guest:" or "siov_dmacheck:".
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
copies=2000
for word in $(cat /proc/cmdline); do
  case "$word" in siov.copies=*) copies=${word#siov.copies=} ;; esac
done
say() { echo "siov-guest: $*" >/dev/kmsg; echo "siov-guest: $*"; }
say "init, $copies copies"
insmod /m/siov_movdir64b.ko
insmod /m/idxd_bus.ko
insmod /m/idxd.ko
D=/sys/bus/dsa/devices
n=0
while [ ! -e $D/dsa0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
if [ ! -e $D/dsa0 ]; then say "FAIL no dsa0"; poweroff -f; fi
say "dsa0 max_work_queues_size=$(cat $D/dsa0/max_work_queues_size) max_engines=$(cat $D/dsa0/max_engines)"
w() { echo "$2" >"$1" || say "write $2 > $1 failed"; }
w $D/engine0.0/group_id 0
w $D/wq0.0/group_id 0
w $D/wq0.0/mode dedicated
w $D/wq0.0/size 16
w $D/wq0.0/priority 10
w $D/wq0.0/type kernel
w $D/wq0.0/name siov-guest
[ -e $D/wq0.0/driver_name ] && w $D/wq0.0/driver_name dmaengine
[ "$(cat $D/dsa0/state)" = enabled ] || w /sys/bus/dsa/drivers/idxd/bind dsa0
w /sys/bus/dsa/drivers/dmaengine/bind wq0.0
say "dsa0 state=$(cat $D/dsa0/state) wq0.0 state=$(cat $D/wq0.0/state)"
if [ "$(cat $D/wq0.0/state)" = enabled ]; then
  insmod /m/siov_dmacheck.ko copies="$copies"
fi
grep idxd /proc/interrupts | while read -r line; do say "irq $line"; done
say "movdir64b_emulated=$(cat /sys/module/siov_movdir64b/parameters/handled)"
say "done"
poweroff -f
