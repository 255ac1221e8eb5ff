#!/usr/bin/env bash
# Builds the development artifacts and a signed development manifest:
#   localkube = the test stand-in (a tar.zst with its binary and version.txt)
#   kubectl   = this machine's real kubectl, pinned by sha256 and size
# Usage: ci/dev-manifest.sh OUT_DIR [STANDIN_VERSION] [MANIFEST_VERSION|auto] [PROFILE: debug|release]
# (KUBESTRAP_DEV_BIN=DIR: use the binaries in DIR instead of building them)
# Prints the manifest path. With MANIFEST_VERSION auto (the default), an
# existing OUT_DIR/manifest.toml pinning the same artifacts is kept as it is,
# and one pinning other artifacts is replaced by the next version (kubestrap
# refuses a version it has seen with other bytes: rollback protection). The manifest is signed with ci/dev-keys/dev.key,
# which kubestrap trusts only where `kubestrap trust add ci/dev-keys/dev.pub` was run.
# With KUBESTRAP_VM_ARTIFACTS=DIR (the output of ci/vm/build.sh), the manifest
# also pins the qemu driver's hypervisor and base image from DIR; with
# KUBESTRAP_DOCKER_ARTIFACTS=DIR (the output of ci/docker/build.sh), the
# docker driver's base rootfs. The localkube then runs on those drivers too.
# With KUBESTRAP_LOCALKUBE=FILE (the artifact ci/localkube/build.sh wrote),
# the localkube is real upstream Kubernetes instead of the stand-in, run as
# ci/localkube/run.toml says (KUBESTRAP_LOCALKUBE_RUN=FILE: another run
# section), and the kubectl pinned is this machine's oldest (the nearest to
# its v1.20.2); STANDIN_VERSION is then ignored.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
standin_version=${2:-v1.33.1+standin}
manifest_version=${3:-auto}
profile=${4:-release}

bin="$top/target/$profile"
# KUBESTRAP_DEV_BIN=DIR: kubestrap and localkube-standin are built there
# already (the tests: a nested cargo build could rebuild what they run).
if [ -n "${KUBESTRAP_DEV_BIN:-}" ]; then
  bin=$KUBESTRAP_DEV_BIN
else
  cargo_flags=(--quiet -p kubestrap -p localkube-standin)
  [ "$profile" = release ] && cargo_flags+=(--release)
  (cd "$top" && cargo build "${cargo_flags[@]}" >&2)
fi

real=${KUBESTRAP_LOCALKUBE:-}
kubectls=(/usr/lib/google-cloud-sdk/bin/kubectl.1.33 /usr/lib/google-cloud-sdk/bin/kubectl.1.3{2,1,0})
[ -z "$real" ] || kubectls=(/usr/lib/google-cloud-sdk/bin/kubectl.1.2{7,8,9} /usr/lib/google-cloud-sdk/bin/kubectl.1.3{0,1,2,3})
kubectl=""
for k in "${kubectls[@]}" "$(command -v kubectl || true)"; do
  if [ -n "$k" ] && [ -x "$k" ]; then kubectl=$k; break; fi
done
[ -n "$kubectl" ] || { echo "no kubectl binary found on this machine" >&2; exit 1; }

if [ -n "$real" ]; then
  [ -f "$real" ] || { echo "KUBESTRAP_LOCALKUBE=$real: no such file (ci/localkube/build.sh writes it)" >&2; exit 1; }
  artifact=$real
  standin_version=$(basename "$real" | sed -n 's/^localkube-\(v[0-9.]*\)-\([0-9a-f]*\)-linux-.*/\1+localkube.\2/p')
  [ -n "$standin_version" ] || { echo "$real: not named localkube-vX.Y.Z-<key>-linux-<arch>.tar.zst" >&2; exit 1; }
  program=bin/localkube
  run_file=${KUBESTRAP_LOCALKUBE_RUN:-$top/ci/localkube/run.toml}
else
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  cp "$bin/localkube-standin" "$stage/localkube-standin"
  printf '%s\n' "$standin_version" > "$stage/version.txt"
  artifact="$out/localkube-standin-${standin_version//+/_}.tar.zst"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - localkube-standin version.txt | zstd -q -3 -f -o "$artifact"
  program=localkube-standin
  run_file=$top/ci/standin/run.toml
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
extra_args=()
extra_files=()
extra_hashes=()
channel=dev
if [ -n "$real" ]; then
  # Its own channel: a home that saw the stand-in's dev-1 refuses another
  # dev-1 (rollback protection). Not in a VM yet: no qemu artifacts.
  channel=dev-localkube
  unset KUBESTRAP_VM_ARTIFACTS
fi
if [ -n "${KUBESTRAP_VM_ARTIFACTS:-}" ]; then
  hv=$(ls "$KUBESTRAP_VM_ARTIFACTS"/hypervisor-*.tar.zst | head -1)
  base=$(ls "$KUBESTRAP_VM_ARTIFACTS"/base-*.tar.zst | head -1)
  extra_files=("$hv" "$base")
  extra_hashes=("$(sha "$hv")" "$(sha "$base")")
  extra_args=(--component "hypervisor@$(basename "$hv" .tar.zst | sed 's/^hypervisor-//')=$hv#bin/qemu-system-x86_64"
           --drivers hypervisor=qemu
           --component "base-image@$(basename "$base" .tar.zst | sed 's/^base-//')=$base#vmlinuz"
           --drivers base-image=qemu)
fi
drivers=native
[ -n "${KUBESTRAP_VM_ARTIFACTS:-}" ] && drivers+=,qemu
if [ -n "${KUBESTRAP_DOCKER_ARTIFACTS:-}" ]; then
  rootfs=$(ls "$KUBESTRAP_DOCKER_ARTIFACTS"/rootfs-*.tar.zst | head -1)
  extra_files+=("$rootfs")
  extra_hashes+=("$(sha "$rootfs")")
  rootfs_version=$(basename "$rootfs" .tar.zst | sed 's/^rootfs-//; s/-linux-[a-z0-9_]*$//')
  extra_args+=(--component "rootfs@$rootfs_version=$rootfs" --drivers rootfs=docker)
  drivers+=,docker
fi
size() { stat -c %s "$1"; }
k8s=${standin_version#v}; k8s=${k8s%%+*}
manifest="$out/manifest.toml"
if [ "$manifest_version" = auto ]; then
  manifest_version=1
  if [ -f "$manifest" ] && [ -f "$manifest.minisig" ]; then
    pinned=$( (grep '^sha256' "$manifest"; sed -n 's/^# run: //p' "$manifest") | sort)
    wanted=$( (printf 'sha256 = "%s"\n' "$(sha "$kubectl")" "$(sha "$artifact")" ${extra_files[@]+"${extra_hashes[@]}"}; sha "$run_file") | sort)
    if [ "$pinned" = "$wanted" ]; then echo "$manifest"; exit 0; fi
    manifest_version=$(( $(sed -n 's/^version = \([0-9]*\)$/\1/p' "$manifest") + 1 ))
  fi
fi
kubectl_version=$("$kubectl" version --client -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"v\([^"]*\)".*/\1/p' | head -1)
# Written by the one manifest writer (`kubestrap manifest new`): the stand-in
# localkube and this machine's kubectl. NOT a release manifest.
"$bin/kubestrap" manifest new --out "$manifest" --channel "$channel" --manifest-version "$manifest_version" \
  --kubernetes "$k8s" --valid-for 180d \
  --component "kubectl@$kubectl_version=$kubectl" \
  --component "localkube@${standin_version#v}=$artifact#$program" \
  --drivers "localkube=$drivers" ${extra_args[@]+"${extra_args[@]}"} \
  --run "$run_file" >&2
# Which run section it was made with (a changed one makes the next version).
printf '# run: %s\n' "$(sha "$run_file")" >> "$manifest"
"$bin/kubestrap" manifest sign --key "$top/ci/dev-keys/dev.key" "$manifest" >&2
echo "$manifest"
