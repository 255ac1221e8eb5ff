#!/usr/bin/env bash
# docker driver benchmark: cold start (rootfs import + container create +
# ready) and warm start (a stopped container started again, to ready) on the
# docker driver, against the native driver's warm start in the same run, and
# the rootfs import time against its size.
#
# Usage: bench/docker.sh [RUNS]   (default 5). Needs a Docker engine, curl, zstd.
set -euo pipefail
runs=${1:-5}
. "$(dirname "$0")/lib.sh"
[ -n "$(ls "$top"/target/docker/rootfs-*.tar.zst 2>/dev/null)" ] || "$top/ci/docker/build.sh" "$top/target/docker" >/dev/null
rootfs=$(ls "$top"/target/docker/rootfs-*.tar.zst | head -1)
art=$work/artifacts
mkdir -p "$art/stage"
cp "$top/target/release/localkube-standin" "$art/stage/" && echo v1.33.1+standin > "$art/stage/version.txt"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$art/stage" -cf - localkube-standin version.txt | zstd -q -3 -o "$art/standin.tar.zst"
"$ks" manifest new --out "$art/m.toml" --channel bench --kubernetes 1.33.1 \
  --component "kubectl@1.33.1=/usr/lib/google-cloud-sdk/bin/kubectl.1.33" \
  --component "localkube@1.33.1+standin=$art/standin.tar.zst#localkube-standin" --drivers localkube=native,docker \
  --component "rootfs@bench=$rootfs" --drivers rootfs=docker --run "$top/ci/standin/run.toml" >/dev/null
"$ks" manifest sign --key "$top/ci/dev-keys/dev.key" "$art/m.toml" >/dev/null
"$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
tag=kubestrap-rootfs:$(sha256sum "$rootfs" | cut -d' ' -f1)
"$ks" fetch --manifest "$art/m.toml" --driver docker >/dev/null 2>&1

cold=(); import=(); warm=(); native=()
for i in $(seq "$runs"); do
  docker image rm -f "$tag" >/dev/null 2>&1 || true
  t0=$(now); "$ks" start -p d --driver docker --manifest "$art/m.toml" --port "$(free_port)" >/dev/null 2>&1; cold+=($(( $(now) - t0 )))
  "$ks" stop -p d >/dev/null
  t0=$(now); "$ks" start -p d >/dev/null 2>&1; warm+=($(( $(now) - t0 )))
  # The import alone, from the same verified blob.
  t0=$(now); zstd -dc "$rootfs" | docker import - "kubestrap-bench-import:$i" >/dev/null; import+=($(( $(now) - t0 )))
  docker image rm -f "kubestrap-bench-import:$i" >/dev/null
  [ "$i" = 1 ] && "$ks" start -p n --driver native --manifest "$art/m.toml" --port "$(free_port)" >/dev/null 2>&1
  "$ks" stop -p n >/dev/null
  t0=$(now); "$ks" start -p n >/dev/null 2>&1; native+=($(( $(now) - t0 )))
  "$ks" delete -p d >/dev/null
done
echo "machine: $(machine); engine: docker $(docker version --format '{{.Server.Version}}') ($(docker info --format '{{.Driver}}')); runs: $runs (medians)"
echo "docker driver cold start (import + create + ready): $(printf '%s\n' "${cold[@]}" | median ms 0) ms"
echo "docker driver warm start (stopped container, to ready): $(printf '%s\n' "${warm[@]}" | median ms 0) ms"
echo "native driver warm start (stopped profile, to ready): $(printf '%s\n' "${native[@]}" | median ms 0) ms"
echo "rootfs import by hand (zstd -dc | docker import): $(printf '%s\n' "${import[@]}" | median ms 0) ms for $(stat -c %s "$rootfs") bytes compressed, $(zstd -dc "$rootfs" | wc -c) bytes of tar"
