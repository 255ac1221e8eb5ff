#!/usr/bin/env bash
# Builds the project's own container images from Debian's packages,
# reproducibly (same packages → same bytes), as image archives that
# `kubestrap image load`, `ctr images import` and `docker load` all take:
#   OUT/busybox.tar   localhost/kubestrap/busybox:<version>: busybox-static
#                     with its applet links (sh, httpd, nslookup, wget, ...)
# Usage: ci/images/build.sh OUT. Prints `file name digest` per image.
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ver=$(dpkg-query -W -f '${Version}' busybox-static); ver=${ver#*:}; ver=${ver%%-*}
root=$work/busybox
mkdir -p "$root"/{bin,etc,tmp,www,root}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'hello from kubestrap\n' > "$root/www/index.html"
python3 "$here/mkimage.py" --name "localhost/kubestrap/busybox:$ver" --cmd '["sh"]' "$root" "$out/busybox.tar"
