#!/usr/bin/env bash
# Installs what the tests and the artifact builds use, then checks that every
# program they run is really there. Checking a package's status before an
# install cannot see what the install itself removes: installing
# qemu-system-x86 7.2 removes a qemu-utils 10.0 from backports (and with it
# qemu-img), so programs are checked after apt has run, and the packages of
# missing ones are installed once more.
# Usage: ci/prereqs.sh   (as root with apt-get; otherwise it names what to install)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# program → the Debian package that provides it
declare -A provider=(
  [minisign]=minisign        # the minisign interoperability tests
  [zstd]=zstd                # artifacts are tar.zst
  [curl]=curl                # benchmarks and scripts
  [unzip]=unzip              # bundles are listed with it
  [ip]=iproute2              # network namespaces, the native driver's node address
  [iptables]=iptables        # the native driver's guard chain and k3s cleanup
  [openssl]=openssl          # the k3s PKI placements are checked with it
  [qemu-system-x86_64]=qemu-system-x86   # the qemu driver's hypervisor (ci/vm/build.sh)
  [qemu-img]=qemu-utils
  [busybox]=busybox-static   # the VM's initramfs and the docker driver's rootfs
  [cpio]=cpio
  [depmod]=kmod
  [mke2fs]=e2fsprogs         # the guest's ext4 data disk
  [setpriv]=util-linux       # tests that drop root
  [runuser]=util-linux       # the rootless engines' user (ci/engines.sh)
  [podman]=podman            # the docker driver on Podman, rootful and rootless
  [catatonit]=catatonit      # Podman's --init
  [newuidmap]=uidmap         # rootless engines' user namespaces
  [slirp4netns]=slirp4netns  # rootless networking
  [rootlesskit]=rootlesskit  # rootless Docker (dockerd-rootless.sh)
  [fuse-overlayfs]=fuse-overlayfs  # rootless Docker's storage driver
  [/usr/lib/podman/netavark]=netavark      # Podman's network stack (not the CNI plugins)
  [/usr/lib/podman/aardvark-dns]=aardvark-dns
  # The development localkube (ci/localkube/build.sh): upstream Kubernetes
  # from Debian's source package, built with Debian's Go offline.
  [/usr/lib/go-1.19/bin/go]=golang-1.19-go
  [rsync]=rsync              # Kubernetes' build scripts
  [jq]=jq
  [dpkg-source]=dpkg-dev     # unpacks the source package with its patches
  [patchelf]=patchelf        # the bundled binaries find their libraries beside them
  [gcc]=gcc                  # the pause binary (static)
  [python3]=python3          # ci/images/mkimage.py
  [dig]=bind9-dnsutils       # the cluster DNS tests ask it from the host
  [/lib/x86_64-linux-gnu/libseccomp.so.2]=libseccomp2  # runc in the docker driver's rootfs
  [/etc/ssl/certs/ca-certificates.crt]=ca-certificates  # the CA bundle the rootfs and the VM image carry
)

missing() {
  local p
  for p in "${!provider[@]}"; do
    case $p in
      /*) [ -e "$p" ] || echo "$p" ;;
      *) command -v "$p" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$p" >/dev/null 2>&1 || echo "$p" ;;
    esac
  done | sort
}

install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing: $* — install the packages ${pkgs[*]} (apt-get install ${pkgs[*]}) and run this again" >&2
    exit 1
  fi
  [ -n "${updated:-}" ] || { apt-get update -qq; updated=1; }
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

for round in 1 2; do
  mapfile -t gone < <(missing)
  [ ${#gone[@]} -eq 0 ] && break
  pkgs=()
  for p in "${gone[@]}"; do pkgs+=("${provider[$p]}"); done
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  echo "==> installing ${pkgs[*]} (for: ${gone[*]})" >&2
  install "${pkgs[@]}"
done
mapfile -t gone < <(missing)
if [ ${#gone[@]} -gt 0 ]; then
  echo "still missing after installing their packages: ${gone[*]}" >&2
  exit 1
fi
kubectl=$(ls /usr/lib/google-cloud-sdk/bin/kubectl.1.3* 2>/dev/null | head -1 || true)
[ -n "$kubectl" ] || command -v kubectl >/dev/null || { echo "no kubectl on this machine (the tests run the real one)" >&2; exit 1; }
