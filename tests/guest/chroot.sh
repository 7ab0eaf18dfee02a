#!/usr/bin/env bash
# Stage 1 of the guest recipe: a Debian trixie chroot holding QEMU (>= 10.1, from trixie-backports,
# for its vfio-user-pci client), a Debian kernel with its headers (to build our guest modules),
# busybox-static (the guest's userland) and the tools to pack an initramfs.
# Usage: chroot.sh DIR   (DIR must not exist; it is created complete or not at all)
# The Debian archive is taken from this machine's own apt sources: no host is written here.
set -euo pipefail
dest=$1
[ ! -e "$dest" ] || { echo "chroot.sh: $dest exists" >&2; exit 1; }

mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\?$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "chroot.sh: no Debian archive in this machine's apt sources" >&2; exit 1; }

if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends debootstrap >/dev/null
fi

tmp="$dest.tmp.$$"
unmount_all() {
  for m in dev/pts dev sys proc; do
    if mountpoint -q "$1/$m"; then umount "$1/$m" 2>/dev/null || umount -l "$1/$m"; fi
  done
}
cleanup() {
  unmount_all "$tmp"
  # never remove a tree that still has the host's /dev or /proc mounted in it
  for m in dev/pts dev sys proc; do
    if mountpoint -q "$tmp/$m"; then echo "chroot.sh: $tmp/$m still mounted, kept" >&2; return; fi
  done
  rm -rf "$tmp"
}
# a build killed earlier left its mounts behind: take them down (the tree stays)
for stale in "$dest".tmp.*; do
  [ -d "$stale" ] && unmount_all "$stale"
done
trap cleanup EXIT
debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 || { tail -n 30 "$tmp.log" >&2; exit 1; }
rm -f "$tmp.log"
echo "deb $mirror trixie-backports main" >"$tmp/etc/apt/sources.list.d/backports.list"
mount -t proc proc "$tmp/proc"
mount -t sysfs sys "$tmp/sys"
mount --bind /dev "$tmp/dev"
mount --bind /dev/pts "$tmp/dev/pts"
inroot() { chroot "$tmp" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
inroot apt-get update -qq
# The kernel headers first: installed after backports' QEMU they would fight over libelf.
inroot apt-get install -y -qq --no-install-recommends linux-headers-amd64 make gcc busybox-static cpio xz-utils kmod >/dev/null
inroot apt-get install -y -qq --no-install-recommends -t trixie-backports qemu-system-x86 >/dev/null
# The kernel image is unpacked, not installed: installing it would build an initramfs we never use.
kver=$(basename "$(ls -d "$tmp"/usr/src/linux-headers-*-amd64 | head -n1)" | sed 's/^linux-headers-//')
inroot sh -c "cd /tmp && apt-get download -qq linux-image-$kver"
inroot sh -c "dpkg-deb -x /tmp/linux-image-${kver}_*.deb /kimage && rm /tmp/linux-image-*.deb"
echo "$kver" >"$tmp/kernel-version"
inroot apt-get clean
unmount_all "$tmp"
mv "$tmp" "$dest"
trap - EXIT
