#!/usr/bin/env bash
# Builds the qemu driver's two artifacts from Debian's packages, reproducibly
# (same packages → same sha256, from any directory):
#   OUT/hypervisor-qemu-<ver>-linux-x86_64.tar.zst
#       bin/qemu-system-x86_64, bin/qemu-img, lib/ (every shared library they
#       load and the loader, lib/ld-linux-x86-64.so.2: run from anywhere as
#       `lib/ld-linux-x86-64.so.2 --library-path lib bin/qemu-...`, with
#       QEMU_MODULE_DIR=lib/qemu for the TCG module), share/qemu/
#       (the firmware a direct kernel boot needs)
#   OUT/base-<kernel>-linux-x86_64.tar.zst
#       vmlinuz (linux-image-cloud-amd64) and initrd.img: busybox-static, glibc
#       (for localkubes linked against it), a module tree with modules.dep
#       (virtio, ACPI button, and what k3s needs: overlay, every netfilter,
#       bridge and IP-set module, veth, vxlan) and ci/vm/init
# Usage: ci/vm/build.sh OUT [DEBS]   (DEBS: where the kernel .deb is kept;
# default OUT/debs; downloaded with apt-get when missing). Needs, installed:
# qemu-system-x86, qemu-utils, busybox-static, cpio, kmod, zstd (`.ci/run`
# installs them). Prints `name sha256` per artifact.
set -euo pipefail
# File modes go into the artifacts: the same whatever the builder's umask.
umask 022
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
debs=$(mkdir -p "${2:-$out/debs}" && cd "${2:-$out/debs}" && pwd)
export LC_ALL=C TZ=UTC
epoch=${SOURCE_DATE_EPOCH:-0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A tar.zst of DIR with fixed order, owners, times and modes.
pack() {
  find "$1" -exec touch -h -d "@$epoch" {} +
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --mode='u+rwX,go+rX,go-w' \
    --format=gnu -C "$1" -cf - . | zstd -q -10 --no-progress -f -o "$2"
}

# Every shared library the programs load, by soname, from this system.
libs_of() {
  ldd "$@" | awk '/=> \// {print $3} /^\t\/lib.*ld-linux/ {print $1}' | sort -u
}

# ---- hypervisor ----------------------------------------------------------
qemu_version=$(dpkg-query -W -f '${Version}' qemu-system-x86)
hv=$work/hypervisor
mkdir -p "$hv/bin" "$hv/lib/qemu" "$hv/share/qemu"
cp /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img "$hv/bin/"
# TCG is a loadable module in Debian's build (QEMU_MODULE_DIR=lib/qemu).
tcg=/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
cp "$tcg" "$hv/lib/qemu/"
for lib in $(libs_of /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img "$tcg"); do
  cp -L "$lib" "$hv/lib/$(basename "$lib")"
done
for fw in bios-256k.bin; do cp -L "/usr/share/seabios/$fw" "$hv/share/qemu/"; done
for fw in linuxboot_dma.bin kvmvapic.bin; do cp -L "/usr/share/qemu/$fw" "$hv/share/qemu/"; done
printf 'qemu %s (Debian qemu-system-x86)\n' "$qemu_version" > "$hv/VERSION"
hv_ver=${qemu_version#*:}
hv_ver=${hv_ver%%+*}
hv_out=$out/hypervisor-qemu-$hv_ver-linux-x86_64.tar.zst
pack "$hv" "$hv_out"

# ---- base image ----------------------------------------------------------
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "ci/vm/build.sh: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
if ! ls "$debs/${kpkg}_"*.deb >/dev/null 2>&1; then
  (cd "$debs" && apt-get download "$kpkg" >&2)
fi
deb=$(ls "$debs/${kpkg}_"*.deb | sort | tail -1)
dpkg-deb -x "$deb" "$work/kernel"
kver=${kpkg#linux-image-}
kroot=$work/kernel
depmod -b "$kroot" "$kver"

rd=$work/initrd
mkdir -p "$rd"/{bin,dev,proc,sys,run,tmp,data,etc/acpi/PWRF,lib/modules,lib64,lib/x86_64-linux-gnu,sys/fs/cgroup,root}
cp /bin/busybox "$rd/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rd/bin/$applet"
done
# The CA bundle pulls are checked against (as the docker driver's rootfs).
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rd/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$here/init" "$rd/init"
install -D -m 0755 "$here/../guest/place-data" "$rd/lib/kubestrap/place-data"
install -D -m 0755 "$here/../guest/keep-dirs" "$rd/lib/kubestrap/keep-dirs"
# The power button (ACPI) tells init to stop localkube and power off.
printf 'PWRF PWRF/power\n' > "$rd/etc/acpid.conf"
printf '#!/bin/sh\nkill -USR1 1\n' > "$rd/etc/acpi/PWRF/power"
chmod 0755 "$rd/etc/acpi/PWRF/power"
# glibc, for localkube builds linked against it.
for lib in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
  /lib/x86_64-linux-gnu/libgcc_s.so.1; do
  cp -L "$lib" "$rd$lib"
done
# e2fsprogs: the data disk is ext4 with a journal, checked (e2fsck -p) at
# every boot; busybox's mke2fs makes only ext2, and it has no fsck.
mkdir -p "$rd/usr/sbin"
for prog in /sbin/mke2fs /sbin/e2fsck; do
  cp -L "$prog" "$rd/usr/sbin/$(basename "$prog")"
done
for lib in $(libs_of /sbin/mke2fs /sbin/e2fsck); do
  mkdir -p "$rd$(dirname "$lib")"
  [ -e "$rd$lib" ] || cp -L "$lib" "$rd$lib"
done
cp /etc/mke2fs.conf "$rd/etc/mke2fs.conf"
# Kernel modules, as a real module tree (/lib/modules/<kver> with modules.dep
# and modules.alias from depmod), so modprobe works in the guest: k3s runs
# `modprobe` for overlay, br_netfilter, nf_conntrack, iptable_nat, ... (k3s
# pkg/agent/syssetup/setup.go), and the kernel asks modprobe for what
# kube-proxy's and flannel's rules use (xt_comment, xt_statistic, nft_*, ...).
# Kept: every netfilter, bridge and IP-set module, and the drivers below with
# their dependencies. Booted with: what the VM itself needs (etc/modules.boot).
boot_modules="virtio_pci virtio_blk virtio_net virtio_rng virtio_balloon button evdev"
extra_modules="overlay veth vxlan dummy"
mods=$rd/lib/modules/$kver
mkdir -p "$mods" "$rd/sbin"
kdir=$kroot/lib/modules/$kver
: > "$work/kos"
for m in $boot_modules $extra_modules; do
  modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}' >> "$work/kos"
done
(cd "$kdir" && find kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter kernel/net/bridge \
  -name '*.ko' | sed "s|^|$kdir/|") >> "$work/kos"
# ...and whatever those depend on.
for ko in $(cat "$work/kos"); do
  modprobe -d "$kroot" -S "$kver" --show-depends "$(basename "$ko" .ko)" | awk '$1 == "insmod" {print $2}'
done >> "$work/kos"
sort -u "$work/kos" | while read -r ko; do
  rel=${ko#"$kdir"/}
  mkdir -p "$mods/$(dirname "$rel")"
  cp "$ko" "$mods/$rel"
done
cp "$kdir"/modules.order "$kdir"/modules.builtin "$kdir"/modules.builtin.modinfo "$mods/"
depmod -b "$rd" "$kver"
printf '%s\n' $boot_modules > "$rd/etc/modules.boot"
for applet in modprobe insmod rmmod lsmod depmod modinfo switch_root pivot_root; do
  rm -f "$rd/bin/$applet"
  ln -s ../bin/busybox "$rd/sbin/$applet"
done
mknod -m 600 "$rd/dev/console" c 5 1
mknod -m 666 "$rd/dev/null" c 1 3
find "$rd" -exec touch -h -d "@$epoch" {} +
base=$work/base
mkdir -p "$base"
(cd "$rd" && find . | sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 > "$base/initrd.img"
cp "$kroot/boot/vmlinuz-$kver" "$base/vmlinuz"
printf 'kernel %s (Debian %s), busybox %s, e2fsprogs %s\n' "$kver" "$(dpkg-deb -f "$deb" Version)" \
  "$(dpkg-query -W -f '${Version}' busybox-static)" "$(dpkg-query -W -f '${Version}' e2fsprogs)" > "$base/VERSION"
base_out=$out/base-$kver-linux-x86_64.tar.zst
pack "$base" "$base_out"

for f in "$hv_out" "$base_out"; do
  echo "$(basename "$f") $(sha256sum "$f" | cut -d' ' -f1)"
done
