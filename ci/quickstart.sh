#!/usr/bin/env bash
# The main job on a fresh machine: install what the development artifacts are
# built from (ci/prereqs.sh: as root with apt, then it checks every program is
# there), build kubestrap, the qemu driver's VM artifacts and the docker
# driver's rootfs the way the test command does, write a signed development
# manifest pinning all of them (with the stand-in localkube and this
# machine's real kubectl), make it this home's default manifest, start a
# cluster from it, and show `kubectl get ns` against the new cluster.
#
# The development key is pinned only in this script's own kubestrap home
# (.quickstart/home), never in your real one. Every line of README's "Using
# it" block then works as written with KUBESTRAP_HOME=.quickstart/home (no
# --manifest). The cluster's context is merged into your kubeconfig
# ($KUBECONFIG or ~/.kube/config) like any `kubestrap start`; remove it with:
#   KUBESTRAP_HOME=.quickstart/home target/release/kubestrap delete
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v cargo >/dev/null || { echo "cargo is needed (https://rustup.rs)" >&2; exit 1; }
echo "==> checking the tools the artifacts are built with (ci/prereqs.sh)"
ci/prereqs.sh

export KUBESTRAP_HOME=${KUBESTRAP_HOME:-$top/.quickstart/home}
echo "==> building the qemu driver's VM artifacts and the docker driver's rootfs (target/vm, target/docker)"
ci/vm/build.sh "$top/target/vm" >/dev/null
ci/docker/build.sh "$top/target/docker" >/dev/null
echo "==> building kubestrap and the development manifest (release build; the first one takes a few minutes)"
manifest=$(KUBESTRAP_VM_ARTIFACTS=$top/target/vm KUBESTRAP_DOCKER_ARTIFACTS=$top/target/docker \
  ci/dev-manifest.sh "$top/.quickstart/artifacts" v1.33.1+standin auto release)
ks=$top/target/release/kubestrap
"$ks" trust add ci/dev-keys/dev.pub >/dev/null
# A quickstart cluster from an earlier build runs an older development manifest:
# changing a cluster's release is an upgrade, so recreate the quickstart's own cluster.
version=$(sed -n 's/^version = \([0-9]*\)$/\1/p' "$manifest")
config=$KUBESTRAP_HOME/profiles/kubestrap/config.toml
if [ -f "$config" ] && ! grep -q -- "-$version.toml\"" "$config"; then
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
echo
echo "The cluster keeps running. Its commands (this quickstart's home; README's \"Using it\" has more):"
echo "  export KUBESTRAP_HOME=$KUBESTRAP_HOME PATH=$top/target/release:\$PATH"
echo "  kubestrap status"
echo "  kubestrap stop      # state kept"
echo "  kubestrap delete    # removes it and its kubeconfig entries"
