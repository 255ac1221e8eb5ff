#!/usr/bin/env bash
# Runs every test, on a fresh machine too: installs what the tests use
# (ci/prereqs.sh: as root with apt, then checks every program is there),
# builds the qemu driver's VM artifacts, the docker driver's rootfs and the
# development localkube (real Kubernetes from source), then
# runs the unit tests and the integration tests that drive the kubestrap
# binary against loopback servers, the stand-in localkube, the real kubectl,
# qemu (TCG) and the Docker engine.
#
# A test whose prerequisite is missing fails. KUBESTRAP_TEST_SKIP names the
# groups to skip on purpose (comma-separated: qemu, kvm, docker, podman,
# rootless, netns, minisign, root, localkube); the last line counts the tests that skipped.
# Usage: ci/test.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
ci/prereqs.sh
skip=",${KUBESTRAP_TEST_SKIP:-},"
# The machine's Docker engine normally runs already; one that has stopped is
# started again where this is root and dockerd is installed.
if [[ $skip != *,docker,* ]] && ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
  echo "==> the Docker engine does not answer: starting dockerd (log: /var/log/dockerd.log)" >&2
  (setsid dockerd >> /var/log/dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
fi
if [[ $skip != *,docker,* ]] && ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}: start it, or set KUBESTRAP_TEST_SKIP=docker to skip the docker driver's tests" >&2
  exit 1
fi
# The other container engines the docker driver is tested on: rootful
# Podman, and rootless Podman and rootless Docker for a user made for them
# (ci/engines.sh starts what does not answer yet, and stops it at the end).
if [[ $skip != *,podman,* || $skip != *,rootless,* ]]; then
  engines=$(ci/engines.sh) || { echo "ci/engines.sh could not bring up the engines (KUBESTRAP_TEST_SKIP=podman,rootless skips their tests)" >&2; exit 1; }
  eval "$engines"
  trap 'ci/engines.sh stop' EXIT
fi
# The qemu driver's artifacts (the kernel .deb fetched with apt-get download)
# and the docker driver's base rootfs; the tests pin them from these paths.
if [[ $skip != *,qemu,* ]]; then ci/vm/build.sh target/vm >/dev/null; fi
ci/docker/build.sh target/docker >/dev/null
# Real Kubernetes (the development localkube, from Debian's kubernetes source
# package; cached under /var/cache/kubestrap-build by its inputs: minutes the
# first time, a copy after) and the project's own images the tests load.
if [[ $skip != *,localkube,* ]]; then ci/localkube/build.sh target/localkube >/dev/null; fi
ci/images/build.sh target/images >/dev/null
# Integration tests run the stand-in localkube binary: build every binary first.
cargo build --workspace --bins --quiet
log=$(mktemp)
skipped=$(mktemp)
trap 'rm -f "$log" "$skipped"; [ -z "${engines:-}" ] || ci/engines.sh stop' EXIT
export KUBESTRAP_TEST_SKIPPED_LOG=$skipped
set +e
cargo test --workspace --quiet --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) s += $i} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i} END {print s + 0}' "$log")
nskipped=$(sort -u "$skipped" | grep -c . || true)
if [ "$nskipped" -gt 0 ]; then
  echo "skipped on purpose (KUBESTRAP_TEST_SKIP=${KUBESTRAP_TEST_SKIP:-}):"
  sort -u "$skipped" | sed 's/^/  /'
fi
echo "tests: $passed passed, $failed failed, $nskipped skipped (in $top)"
exit "$status"
