#!/usr/bin/env bash
# The main job on a fresh machine: install what the development artifacts are
# built from (ci/prereqs.sh: as root with apt, then it checks every program is
# there), build kubestrap, the docker driver's rootfs and the development
# localkube — real Kubernetes v1.20.2 built from Debian's `kubernetes` source
# package (ci/localkube/build.sh: ~10 minutes the first time on 2 cores,
# cached by its inputs after that) — write a signed development manifest
# pinning them (with this machine's real kubectl), make it this home's
# default manifest, start a cluster from it, and show `kubectl get ns` and
# `kubectl get nodes` against it: a real node, ready to run pods.
#
#   ci/quickstart.sh            real Kubernetes (native driver as root)
#   ci/quickstart.sh --standin  the test stand-in localkube instead: a look in
#                               seconds, every driver (the qemu VM too) and
#                               multi-node, but no pods
#
# The development key is pinned only in this script's own kubestrap home
# (.quickstart/home), never in your real one. Every line of README's "Using
# it" block then works as written with KUBESTRAP_HOME=.quickstart/home (no
# --manifest; the qemu and multi-node lines with --standin). The cluster's
# context is merged into your kubeconfig ($KUBECONFIG or ~/.kube/config) like
# any `kubestrap start`; remove it with:
#   KUBESTRAP_HOME=.quickstart/home target/release/kubestrap delete
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v cargo >/dev/null || { echo "cargo is needed (https://rustup.rs)" >&2; exit 1; }
echo "==> checking the tools the artifacts are built with (ci/prereqs.sh)"
ci/prereqs.sh

mode=real
case "${1:-}" in
  --standin) mode=standin ;;
  "") ;;
  *) echo "usage: ci/quickstart.sh [--standin]" >&2; exit 2 ;;
esac
export KUBESTRAP_HOME=${KUBESTRAP_HOME:-$top/.quickstart/home}
if [ "$mode" = standin ]; then
  echo "==> building the qemu driver's VM artifacts and the docker driver's rootfs (target/vm, target/docker)"
  ci/vm/build.sh "$top/target/vm" >/dev/null
  ci/docker/build.sh "$top/target/docker" >/dev/null
  echo "==> building kubestrap and the development manifest (release build; the first one takes a few minutes)"
  manifest=$(KUBESTRAP_VM_ARTIFACTS=$top/target/vm KUBESTRAP_DOCKER_ARTIFACTS=$top/target/docker \
    ci/dev-manifest.sh "$top/.quickstart/artifacts" v1.33.1+standin auto release)
else
  echo "==> building the docker driver's rootfs (target/docker)"
  ci/docker/build.sh "$top/target/docker" >/dev/null
  echo "==> building real Kubernetes from source (ci/localkube/build.sh: ~10 minutes the first time, then cached)"
  localkube=$(ci/localkube/build.sh "$top/target/localkube")
  echo "==> building kubestrap and the development manifest (release build; the first one takes a few minutes)"
  manifest=$(KUBESTRAP_LOCALKUBE=$localkube KUBESTRAP_DOCKER_ARTIFACTS=$top/target/docker \
    ci/dev-manifest.sh "$top/.quickstart/artifacts-localkube" v0 auto release)
fi
ks=$top/target/release/kubestrap
"$ks" trust add ci/dev-keys/dev.pub >/dev/null
# A quickstart cluster from an earlier build runs an older development manifest:
# changing a cluster's release is an upgrade, so recreate the quickstart's own cluster.
version=$(sed -n 's/^version = \([0-9]*\)$/\1/p' "$manifest")
channel=$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$manifest")
config=$KUBESTRAP_HOME/profiles/kubestrap/config.toml
if [ -f "$config" ] && ! grep -q -- "$channel-$version.toml\"" "$config"; then
  echo "==> the development build changed: recreating the quickstart cluster"
  "$ks" delete
fi
echo "==> kubestrap manifest default $manifest"
"$ks" manifest default "$manifest"
echo "==> kubestrap start"
"$ks" start
kubectl=$(command -v /usr/lib/google-cloud-sdk/bin/kubectl.1.33 kubectl 2>/dev/null | head -1)
echo "==> $kubectl get ns"
"$kubectl" get ns
if [ "$mode" = real ]; then
  echo "==> $kubectl get nodes -o wide"
  "$kubectl" get nodes -o wide
fi
echo
echo "The cluster keeps running. Its commands (this quickstart's home; README's \"Using it\" has more):"
echo "  export KUBESTRAP_HOME=$KUBESTRAP_HOME PATH=$top/target/release:\$PATH"
echo "  kubestrap status"
echo "  kubestrap stop      # state kept"
echo "  kubestrap delete    # removes it and its kubeconfig entries"
