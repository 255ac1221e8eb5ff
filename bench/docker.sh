#!/usr/bin/env bash
# docker driver benchmark, on every engine: cold start (rootfs import +
# network + container create + ready) and warm start (a stopped container
# started again, to ready) on rootful Docker, rootful Podman, rootless Podman
# and rootless Docker (ci/engines.sh), against the native driver's warm start
# in the same run, and the rootfs import by hand on each.
#
# Usage: bench/docker.sh [RUNS]   (default 5). As root; needs a Docker engine,
# the packages ci/prereqs.sh installs, curl, zstd.
set -euo pipefail
runs=${1:-5}
. "$(dirname "$0")/lib.sh"
[ -n "$(ls "$top"/target/docker/rootfs-*.tar.zst 2>/dev/null)" ] || "$top/ci/docker/build.sh" "$top/target/docker" >/dev/null
rootfs=$(ls "$top"/target/docker/rootfs-*.tar.zst | head -1)
art=$work/artifacts
standin_tarball "$art"
"$ks" manifest new --out "$art/m.toml" --channel bench --kubernetes 1.33.1 \
  --component "kubectl@1.33.1=/usr/lib/google-cloud-sdk/bin/kubectl.1.33" \
  --component "localkube@1.33.1+standin=$art/standin.tar.zst#localkube-standin" --drivers localkube=native,docker \
  --component "rootfs@bench=$rootfs" --drivers rootfs=docker --run "$top/ci/standin/run.toml" >/dev/null
"$ks" manifest sign --key "$top/ci/dev-keys/dev.key" "$art/m.toml" >/dev/null
"$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
tag=kubestrap-rootfs:$(sha256sum "$rootfs" | cut -d' ' -f1)

# Every engine ci/engines.sh brings up, beside the machine's Docker: rootful
# Podman, and rootless Podman and Docker for their user (kubestrap runs as
# that user there, with a home of its own).
eval "$("$top/ci/engines.sh")"
bench_cleanup() {
  for e in "${engines[@]}"; do as_engine "$e" "$ks" delete --all >/dev/null 2>&1 || :; done
  "$top/ci/engines.sh" stop
}
engines=("rootful Docker|unix:///var/run/docker.sock|" "rootful Podman|$KUBESTRAP_TEST_PODMAN|"
  "rootless Podman|$KUBESTRAP_TEST_ROOTLESS_PODMAN|$KUBESTRAP_TEST_ROOTLESS_USER"
  "rootless Docker|$KUBESTRAP_TEST_ROOTLESS_DOCKER|$KUBESTRAP_TEST_ROOTLESS_USER")
chmod 755 "$work"; chmod -R a+rX "$art"
# as_engine "NAME|HOST|USER" CMD...: CMD against that engine, as its user.
as_engine() {
  local name host user; IFS='|' read -r name host user <<<"$1"; shift
  local slug=${name// /-}
  if [ -z "$user" ]; then
    env DOCKER_HOST="$host" KUBESTRAP_HOME="$work/home-$slug" KUBECONFIG="$work/kc-$slug" "$@"
  else
    install -d -o "$user" "$work/u-$slug"
    runuser -u "$user" -- env DOCKER_HOST="$host" XDG_RUNTIME_DIR="/run/user/$(id -u "$user")" HOME="$work/u-$slug" \
      KUBESTRAP_HOME="$work/u-$slug/home" KUBECONFIG="$work/u-$slug/kc" "$@"
  fi
}

native=()
"$ks" start -p n --driver native --manifest "$art/m.toml" --port "$(free_port)" >/dev/null 2>&1
for i in $(seq "$runs"); do
  "$ks" stop -p n >/dev/null
  t0=$(now); "$ks" start -p n >/dev/null 2>&1; native+=($(( $(now) - t0 )))
done
"$ks" delete -p n >/dev/null
echo "machine: $(machine); runs: $runs (medians); stand-in localkube"
echo "native driver warm start (stopped profile, to ready): $(printf '%s\n' "${native[@]}" | median ms 0) ms"
for e in "${engines[@]}"; do
  name=${e%%|*}
  as_engine "$e" "$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
  as_engine "$e" "$ks" fetch --manifest "$art/m.toml" --driver docker >/dev/null 2>&1
  cold=(); warm=(); import=()
  for i in $(seq "$runs"); do
    as_engine "$e" docker image rm -f "$tag" >/dev/null 2>&1 || true
    t0=$(now); as_engine "$e" "$ks" start -p d --driver docker --manifest "$art/m.toml" --port "$(free_port)" >/dev/null 2>&1 \
      || { echo "$name: start failed" >&2; exit 1; }
    cold+=($(( $(now) - t0 )))
    as_engine "$e" "$ks" stop -p d >/dev/null
    t0=$(now); as_engine "$e" "$ks" start -p d >/dev/null 2>&1; warm+=($(( $(now) - t0 )))
    # The import alone, from the same verified blob.
    t0=$(now); zstd -dc "$rootfs" | as_engine "$e" docker import - "kubestrap-bench-import:$i" >/dev/null; import+=($(( $(now) - t0 )))
    as_engine "$e" docker image rm -f "kubestrap-bench-import:$i" >/dev/null
    as_engine "$e" "$ks" delete -p d >/dev/null
  done
  storage=$(as_engine "$e" docker info --format '{{.Driver}}')
  echo "$name ($storage): cold start (import + network + create + ready) $(printf '%s\n' "${cold[@]}" | median ms 0) ms; warm start $(printf '%s\n' "${warm[@]}" | median ms 0) ms; rootfs import by hand (zstd -dc | docker import) $(printf '%s\n' "${import[@]}" | median ms 0) ms"
done
echo "rootfs: $(stat -c %s "$rootfs") bytes compressed, $(zstd -dc "$rootfs" | wc -c) bytes of tar"
