#!/usr/bin/env bash
# Builds the development localkube from upstream Kubernetes source and
# Debian's packages, into one artifact:
#   OUT/localkube-v1.20.2-<key>-linux-x86_64.tar.zst
#     bin/localkube   kube-apiserver, kube-controller-manager, kube-scheduler,
#                     kubelet and kube-proxy as one multi-call binary (one Go
#                     link, not five), with the node supervisor and the
#                     cluster DNS server (ci/localkube/cmd/*.go), built from
#                     Debian's `kubernetes` source package with its vendor/
#     bin/etcd, containerd, containerd-shim-runc-v2, ctr, runc, conntrack,
#         xtables-{nft,legacy}-multi     Debian's binaries (RPATH $ORIGIN/../lib)
#     lib/            the shared libraries they need beyond glibc, xtables/
#     cni/            bridge, host-local, loopback, portmap, firewall
#     images/pause.tar  the sandbox image, from the tree's build/pause/linux/pause.c
#     version.txt
# The source package comes through apt with a sources list and lists of this
# script's own (the machine's apt configuration is never changed); its files
# are checked against the .dsc's sha256 sums. The result is cached under
# $KUBESTRAP_BUILD_CACHE (default /var/cache/kubestrap-build, outside the
# checkout), keyed by the hash of every input: the .dsc, the Debian
# packages, these build files and the Go version. Go's own build cache lives
# there too, so a change to cmd/*.go relinks in seconds.
# Usage: ci/localkube/build.sh OUT. Prints the artifact's path; progress on stderr.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC DEBIAN_FRONTEND=noninteractive
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
cache=${KUBESTRAP_BUILD_CACHE:-/var/cache/kubestrap-build}
mkdir -p "$cache"
t0=$(date +%s)
say() { printf '==> [%4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*" >&2; }

k8s_version=v1.20.2
go=/usr/lib/go-1.19/bin/go
debs=(etcd-server containerd runc containernetworking-plugins iptables conntrack
      libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libseccomp2)
for tool in "$go" rsync jq dpkg-source patchelf gcc zstd python3 apt-get; do
  command -v "$tool" >/dev/null || { echo "ci/localkube/build.sh needs $tool (ci/prereqs.sh installs it)" >&2; exit 1; }
done

# The source package's index: a deb-src entry and lists of our own.
apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n' > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt_dir/lists"
          -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1)
if [ -z "$(find "$apt_dir/lists" -name '*Sources*' -mmin -1440 2>/dev/null)" ]; then
  say "apt-get update (deb-src lists of this build only, in $apt_dir)"
  apt-get "${apt_opts[@]}" update -qq >&2
fi
dsc_sha=$(apt-cache "${apt_opts[@]}" showsrc kubernetes | awk '/^Checksums-Sha256:/ {f=1; next} /^[^ ]/ {f=0} f && $3 ~ /\.dsc$/ {print $1; exit}')
[ -n "$dsc_sha" ] || { echo "apt knows no source package 'kubernetes' (deb-src of Debian bookworm main)" >&2; exit 1; }
# The binary packages, pinned by the sha256 apt's signed index gives them.
[ -n "$(find /var/lib/apt/lists -name '*_Packages*' -mmin -10080 2>/dev/null | head -1)" ] || apt-get update -qq >&2
deb_uris=$(apt-get download --print-uris "${debs[@]}" 2>/dev/null | sort)
[ "$(printf '%s\n' "$deb_uris" | grep -c .)" = "${#debs[@]}" ] || { echo "apt could not name every package of: ${debs[*]}" >&2; exit 1; }
key=$( { echo "$dsc_sha"; printf '%s\n' "$deb_uris" | awk '{print $2, $4}'; "$go" version;
         cd "$top" && sha256sum ci/localkube/build.sh ci/localkube/cmd/*.go ci/images/mkimage.py; } | sha256sum | cut -c1-16)
name=localkube-$k8s_version-$key-linux-x86_64.tar.zst
if [ -f "$cache/artifacts/$name" ]; then
  say "cached: $cache/artifacts/$name (inputs unchanged)"
  cp --reflink=auto "$cache/artifacts/$name" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
  echo "$out/$name"
  exit 0
fi

# 1. The source, checked against the .dsc, unpacked once per .dsc.
src_dl=$cache/source-$dsc_sha
tree=$cache/tree-$dsc_sha
if [ ! -f "$tree/.unpacked" ]; then
  say "downloading Debian's kubernetes source package (~35 MB)"
  rm -rf "$src_dl" "$tree"
  mkdir -p "$src_dl"
  (cd "$src_dl" && apt-get "${apt_opts[@]}" source --download-only kubernetes >/dev/null 2>&1)
  dsc=$(ls "$src_dl"/*.dsc)
  [ "$(sha256sum "$dsc" | cut -d' ' -f1)" = "$dsc_sha" ] || { echo "$dsc does not match the sha256 of apt's signed index" >&2; exit 1; }
  say "checking the source files against $(basename "$dsc")"
  awk '/^Checksums-Sha256:/ {f=1; next} /^[^ ]/ {f=0} f && NF == 3 {print $1 "  " $3}' "$dsc" | (cd "$src_dl" && sha256sum --quiet -c -) >&2
  say "unpacking the tree (with Debian's patches)"
  dpkg-source --no-check -x "$dsc" "$tree" >/dev/null
  touch "$tree/.unpacked"
fi

# 2. The multi-call binary, built with the tree's vendored modules.
say "building bin/localkube with Go $("$go" env GOVERSION) (first time: code generators, then the five components: several minutes on 2 cores)"
rm -rf "$tree/cmd/localkube"
mkdir -p "$tree/cmd/localkube"
cp "$here"/cmd/*.go "$tree/cmd/localkube/"
mkdir -p "$tree/.go/src/k8s.io"
[ -L "$tree/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
(
  cd "$tree"
  export PATH=$(dirname "$go"):$PATH GOFLAGS=-mod=vendor GOCACHE=$cache/go-cache GOPATH=$cache/gopath CGO_ENABLED=0 \
    KUBE_STATIC_OVERRIDES=localkube KUBE_VERBOSE=0 \
    KUBE_GIT_VERSION=$k8s_version KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 \
    KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 SOURCE_DATE_EPOCH=1610568170
  make WHAT=cmd/localkube >&2
)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
mkdir -p "$stage"/{bin,lib/xtables,cni,images}
install -m 0755 "$tree/_output/bin/localkube" "$stage/bin/localkube"
[ "$("$stage/bin/localkube" version)" = "$k8s_version" ] || { echo "bin/localkube does not say $k8s_version" >&2; exit 1; }

# 3. Debian's binaries for the rest of a node.
say "fetching Debian's packages: ${debs[*]}"
deb_dir=$cache/debs
mkdir -p "$deb_dir"
x=$stage/.x
mkdir -p "$x"
while read -r uri file size sha; do
  if [ ! -f "$deb_dir/$file" ] || [ "SHA256:$(sha256sum "$deb_dir/$file" | cut -d' ' -f1)" != "$sha" ]; then
    (cd "$deb_dir" && apt-get download "$(echo "$file" | cut -d_ -f1)" >/dev/null 2>&1)
  fi
  [ "SHA256:$(sha256sum "$deb_dir/$file" | cut -d' ' -f1)" = "$sha" ] || { echo "$deb_dir/$file does not match apt's index ($sha)" >&2; exit 1; }
  dpkg-deb -x "$deb_dir/$file" "$x"
done <<< "$deb_uris"
for b in usr/bin/etcd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr usr/sbin/runc usr/sbin/conntrack \
         usr/sbin/xtables-nft-multi usr/sbin/xtables-legacy-multi; do
  install -m 0755 "$x/$b" "$stage/bin/$(basename "$b")"
done
for p in bridge host-local loopback portmap firewall; do install -m 0755 "$x/usr/lib/cni/$p" "$stage/cni/$p"; done
for l in libseccomp.so.2 libxtables.so.12 libip4tc.so.2 libip6tc.so.2 libnftnl.so.11 libmnl.so.0 \
         libnetfilter_conntrack.so.3 libnfnetlink.so.0; do
  cp -L "$x/usr/lib/x86_64-linux-gnu/$l" "$stage/lib/$l"
done
cp -L "$x"/usr/lib/x86_64-linux-gnu/xtables/*.so "$stage/lib/xtables/"
for b in "$stage"/bin/* "$stage"/lib/*.so.*; do
  if readelf -d "$b" 2>/dev/null | grep -q NEEDED; then
    case $b in */lib/*) patchelf --set-rpath '$ORIGIN' "$b" ;; *) patchelf --set-rpath '$ORIGIN/../lib' "$b" ;; esac
  fi
done
for b in "$stage"/bin/*; do
  missing=$(ldd "$b" 2>/dev/null | grep 'not found' || true)
  [ -z "$missing" ] || { echo "$b: libraries not found: $missing" >&2; exit 1; }
done

# 4. The pause image, from the tree's own source.
say "building the pause image from build/pause/linux/pause.c"
mkdir -p "$x/pause"
gcc -Os -Wall -Werror -static -DVERSION=v3.4-localkube -o "$x/pause/pause" "$tree/build/pause/linux/pause.c"
strip "$x/pause/pause"
touch -d @0 "$x/pause/pause"
python3 "$top/ci/images/mkimage.py" --name localhost/localkube/pause:3.4 --entrypoint '["/pause"]' "$x/pause" "$stage/images/pause.tar" >/dev/null
rm -rf "$x"

{ echo "$k8s_version"; } > "$stage/version.txt"
{
  echo "localkube $k8s_version: upstream Kubernetes from Debian's source package kubernetes ($dsc_sha)"
  printf '%s\n' "$deb_uris" | awk '{print "  " $2}'
  echo "  built with $("$go" env GOVERSION)"
} > "$stage/BUILDINFO"
say "packing $name"
find "$stage" -exec touch -h -d @0 {} +
mkdir -p "$cache/artifacts"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$stage" -cf - . \
  | zstd -q -T0 -12 --no-progress -f -o "$cache/artifacts/$name.tmp"
mv "$cache/artifacts/$name.tmp" "$cache/artifacts/$name"
cp --reflink=auto "$cache/artifacts/$name" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
say "done: $out/$name ($(du -h "$out/$name" | cut -f1))"
echo "$out/$name"
