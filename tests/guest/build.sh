#!/usr/bin/env bash
# Builds what the guest test boots, cached between runs on one machine:
#   1. a Debian trixie chroot with QEMU (trixie-backports), a kernel and its headers
#      (tests/guest/chroot.sh), keyed by the hash of that recipe;
#   2. siov's two guest modules (tests/guest/modules) built against that kernel, and an
#      initramfs of busybox-static, the kernel's own idxd/idxd_bus modules and init.sh,
#      keyed by the hash of everything it is made from.
# Prints one line, the directory holding root (the chroot), vmlinuz and initrd.img.
# SIOV_GUEST_CACHE overrides the cache directory (default /var/cache/siov-guest).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SIOV_GUEST_CACHE:-/var/cache/siov-guest}
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

root_key=$(cat "$here/chroot.sh" | sha256sum | cut -c1-16)
root="$cache/root-$root_key"
if [ ! -d "$root" ]; then
  bash "$here/chroot.sh" "$root" >&2
fi

boot_key=$( (echo "$root_key"; cat "$here/build.sh" "$here/init.sh" "$here"/modules/*) | sha256sum | cut -c1-16)
out="$cache/boot-$boot_key"
if [ ! -f "$out/initrd.img" ]; then
  kver=$(cat "$root/kernel-version")
  tmp="$out.tmp.$$"
  rm -rf "$tmp" "$root/build"
  mkdir -p "$tmp" "$root/build"
  cp "$here"/modules/* "$root/build/"
  chroot "$root" make -s -C "/usr/src/linux-headers-$kver" M=/build modules >&2
  # the initramfs is staged and packed inside the chroot, with its own cpio and gzip
  ird="$root/initrd-stage"
  rm -rf "$ird"
  mkdir -p "$ird"/{bin,proc,sys,dev,m,tmp}
  cp "$root/usr/bin/busybox" "$ird/bin/busybox"
  ln -s busybox "$ird/bin/sh"
  cp "$here/init.sh" "$ird/init"
  chmod +x "$ird/init"
  cp "$root"/build/siov_movdir64b.ko "$root"/build/siov_dmacheck.ko "$ird/m/"
  for mod in idxd_bus idxd; do
    chroot "$root" xz -dc "/kimage/usr/lib/modules/$kver/kernel/drivers/dma/idxd/$mod.ko.xz" >"$ird/m/$mod.ko"
  done
  chroot "$root" sh -c 'cd /initrd-stage && find . | cpio -o -H newc --quiet | gzip -1' >"$tmp/initrd.img"
  rm -rf "$ird" "$root/build"
  cp "$root/kimage/boot/vmlinuz-$kver" "$tmp/vmlinuz"
  ln -s "$root" "$tmp/root"
  rm -rf "$out"
  mv "$tmp" "$out"
fi
# older recipes' trees and killed builds' leftovers go (1 GB each; the lock keeps builds
# apart); never a tree with something mounted in it
for old in "$cache"/root-* "$cache"/boot-*; do
  case "$old" in "$root" | "$out") continue ;; esac
  [ -d "$old" ] || continue
  if [ -z "$(awk -v p="$old/" 'index($2, p) == 1' /proc/mounts)" ]; then rm -rf "$old"; fi
done
echo "$out"
