#!/usr/bin/env bash
# Builds the docker driver's base rootfs from Debian's packages,
# reproducibly (same packages → same sha256, from any directory):
#   OUT/rootfs-busybox-<ver>-linux-x86_64.tar.zst
#       busybox-static with its applet links, glibc (for localkubes linked
#       against it) and libseccomp (runc re-executes itself from a memfd as
#       `runc init`, where an $ORIGIN RPATH cannot lead to a library beside
#       it), /etc/passwd and /etc/group, and ci/docker/entrypoint as
#       /init. kubestrap imports it into the engine under a tag derived from
#       its sha256; localkube, its args and the PKI are bind-mounted at
#       container creation, never baked in.
# Usage: ci/docker/build.sh OUT. Needs busybox-static and zstd (installed by
# `.ci/run`). Prints `name sha256`.
set -euo pipefail
# File modes go into the artifact: the same whatever the builder's umask.
umask 022
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
export LC_ALL=C TZ=UTC
epoch=${SOURCE_DATE_EPOCH:-0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,data,tmp,run/kubestrap,proc,sys,dev,lib64,lib/x86_64-linux-gnu}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
for lib in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
  /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libseccomp.so.2; do
  cp -L "$lib" "$root$lib"
done
# The CA bundle pulls are checked against (k3s's own image carries it:
# package/Dockerfile): without it a release without air-gap images can pull
# nothing, and neither can the user's pods' images.
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$here/entrypoint" "$root/init"
install -D -m 0755 "$here/../guest/place-data" "$root/lib/kubestrap/place-data"
install -D -m 0755 "$here/../guest/keep-dirs" "$root/lib/kubestrap/keep-dirs"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'busybox %s (Debian busybox-static)\n' "$(dpkg-query -W -f '${Version}' busybox-static)" > "$root/etc/kubestrap-rootfs"
find "$root" -exec touch -h -d "@$epoch" {} +
ver=$(dpkg-query -W -f '${Version}' busybox-static)
ver=${ver#*:}
ver=${ver%%-*}
dest=$out/rootfs-busybox-$ver-linux-x86_64.tar.zst
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=gnu -C "$root" -cf - . \
  | zstd -q -10 --no-progress -f -o "$dest"
echo "$(basename "$dest") $(sha256sum "$dest" | cut -d' ' -f1)"
