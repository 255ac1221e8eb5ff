#!/usr/bin/env bash
# The main job on a fresh machine: build kubestrap and the development
# artifacts, write a signed development manifest (the stand-in localkube and
# this machine's real kubectl, pinned by sha256), start a cluster from it, and
# show `kubectl get ns` against the new cluster.
#
# The development key is pinned only in this script's own kubestrap home
# (.quickstart/home), never in your real one. The cluster's context is merged
# into your kubeconfig ($KUBECONFIG or ~/.kube/config) like any `kubestrap start`;
# remove it with: KUBESTRAP_HOME=.quickstart/home target/release/kubestrap delete
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v cargo >/dev/null || { echo "cargo is needed (https://rustup.rs)" >&2; exit 1; }
if ! command -v zstd >/dev/null; then
  # The development artifact is a tar.zst: install zstd when we can (root with apt).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing zstd (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd) >/dev/null
  else
    echo "zstd is needed: sudo apt-get install -y zstd" >&2; exit 1
  fi
fi

export KUBESTRAP_HOME=${KUBESTRAP_HOME:-$top/.quickstart/home}
echo "==> building kubestrap and the development manifest (release build; the first one takes a few minutes)"
manifest=$(ci/dev-manifest.sh "$top/.quickstart/artifacts" v1.33.1+standin auto release)
ks=$top/target/release/kubestrap
"$ks" trust add ci/dev-keys/dev.pub 2>/dev/null
# A quickstart cluster from an earlier build runs an older development manifest:
# changing a cluster's release is an upgrade, so recreate the quickstart's own cluster.
version=$(sed -n 's/^version = \([0-9]*\)$/\1/p' "$manifest")
config=$KUBESTRAP_HOME/profiles/kubestrap/config.toml
if [ -f "$config" ] && ! grep -q -- "-$version.toml\"" "$config"; then
  echo "==> the development build changed: recreating the quickstart cluster"
  "$ks" delete
fi
echo "==> kubestrap start --manifest $manifest"
"$ks" start --manifest "$manifest"
kubectl=$(command -v /usr/lib/google-cloud-sdk/bin/kubectl.1.33 kubectl 2>/dev/null | head -1)
echo "==> $kubectl get ns"
"$kubectl" get ns
echo
echo "The cluster keeps running. Its commands (this quickstart's home):"
echo "  KUBESTRAP_HOME=$KUBESTRAP_HOME $ks status"
echo "  KUBESTRAP_HOME=$KUBESTRAP_HOME $ks stop      # state kept"
echo "  KUBESTRAP_HOME=$KUBESTRAP_HOME $ks delete    # removes it and its kubeconfig entries"
