#!/usr/bin/env bash
# Multi-node benchmark: time from `kubestrap start --nodes N` of a new
# profile to every node Ready, for 1, 2, 3 and 5 nodes on the docker driver
# (the node image already imported: what a second cluster costs), and 2 VMs
# against 1 on the qemu driver under TCG; the memory each added node takes
# (its container's memory use; its qemu process's resident set); and an
# upgrade of a 3-node docker cluster against one of a single node, split
# into its phases (every node's state is snapshotted). Every figure is a
# ratio against one node in the same run (the goal: 3 docker nodes within
# 1.5x of one), and `node add` of one agent to a running cluster.
#
# Usage: bench/nodes.sh [RUNS]   (default 5; the qemu part runs 3). As root;
# needs a Docker engine, qemu and the artifacts `ci/test.sh` builds.
set -euo pipefail
runs=${1:-5}
. "$(dirname "$0")/lib.sh"
[ -n "$(ls "$top"/target/docker/rootfs-*.tar.zst 2>/dev/null)" ] || "$top/ci/docker/build.sh" "$top/target/docker" >/dev/null
[ -n "$(ls "$top"/target/vm/base-*.tar.zst 2>/dev/null)" ] || "$top/ci/vm/build.sh" "$top/target/vm" >/dev/null
rootfs=$(ls "$top"/target/docker/rootfs-*.tar.zst | head -1)
art=$work/artifacts
standin_tarball "$art"
hv=$(ls "$top"/target/vm/hypervisor-*.tar.zst | head -1)
base=$(ls "$top"/target/vm/base-*.tar.zst | head -1)
"$ks" manifest new --out "$art/m.toml" --channel bench --kubernetes 1.33.1 \
  --component "kubectl@1.33.1=/usr/lib/google-cloud-sdk/bin/kubectl.1.33" \
  --component "localkube@1.33.1+standin=$art/standin.tar.zst#localkube-standin" --drivers localkube=docker,qemu \
  --component "rootfs@bench=$rootfs" --drivers rootfs=docker \
  --component "hypervisor@$(basename "$hv" .tar.zst | sed 's/^hypervisor-//')=$hv#bin/qemu-system-x86_64" --drivers hypervisor=qemu \
  --component "base-image@$(basename "$base" .tar.zst | sed 's/^base-//')=$base#vmlinuz" --drivers base-image=qemu \
  --run "$top/ci/standin/run.toml" >/dev/null
"$ks" manifest sign --key "$top/ci/dev-keys/dev.key" "$art/m.toml" >/dev/null
# The release an upgrade moves to: the same, reporting 1.33.2.
standin_tarball "$art/next" v1.33.2+standin
"$ks" manifest new --out "$art/next.toml" --channel bench --manifest-version 2 --kubernetes 1.33.2 \
  --component "kubectl@1.33.1=/usr/lib/google-cloud-sdk/bin/kubectl.1.33" \
  --component "localkube@1.33.2+standin=$art/next/standin.tar.zst#localkube-standin" --drivers localkube=docker \
  --component "rootfs@bench=$rootfs" --drivers rootfs=docker --run "$top/ci/standin/run.toml" >/dev/null
"$ks" manifest sign --key "$top/ci/dev-keys/dev.key" "$art/next.toml" >/dev/null
"$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
bench_cleanup() {
  "$ks" delete --all >/dev/null 2>&1 || :
  for h in "$work"/home-u*; do [ -d "$h" ] && KUBESTRAP_HOME=$h "$ks" delete --all >/dev/null 2>&1 || :; done
}

# One start of a new profile to every node Ready, in ns; the profile deleted after.
# start_once PROFILE NODES [extra args...]
start_once() {
  local p=$1 n=$2; shift 2
  local t0 t1
  t0=$(now)
  "$ks" start -p "$p" --manifest "$art/m.toml" --nodes "$n" --port "$(free_port)" "$@" >/dev/null 2>"$work/start.err" || { cat "$work/start.err" >&2; return 1; }
  t1=$(now)
  echo $((t1 - t0))
}

echo "machine: $(machine); $(docker version --format 'Docker {{.Server.Version}}' 2>/dev/null)"
# Warm-up: the node image imported, the artifacts cached; the profile kept
# (stopped) while the docker figures are taken, so that the image, which
# goes with its last container, is not imported again by every start.
start_once warm 1 --driver docker >/dev/null && "$ks" stop -p warm >/dev/null
declare -A med
for n in 1 2 3 5; do
  for i in $(seq "$runs"); do
    start_once "d$n-$i" "$n" --driver docker
    if [ "$n" = 5 ] && [ "$i" = 1 ]; then
      # Memory: the server's container and each agent's, as the engine counts it.
      docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' | grep "kubestrap-d5-1-" > "$work/mem-docker" || :
    fi
    "$ks" delete -p "d$n-$i" >/dev/null
  done > "$work/d$n"
  med[$n]=$(median s 2 < "$work/d$n")
done
echo "docker, new profile → every node Ready (median of $runs):"
for n in 1 2 3 5; do
  echo "  $n node(s): ${med[$n]} s ($(awk -v a="${med[$n]}" -v b="${med[1]}" 'BEGIN {printf "%.2f", a / b}')x one node)"
done
echo "  memory per container (docker stats, 5 nodes):"
sed 's/^/    /' "$work/mem-docker"

# `node add`: one agent joins a running one-node cluster, to its node
# Ready (its container made and started, the wait through the server),
# against the whole one-node cluster's start above.
for i in $(seq "$runs"); do
  start_once "a$i" 1 --driver docker >/dev/null
  t0=$(now)
  "$ks" node add -p "a$i" >/dev/null 2>"$work/add.err" || { cat "$work/add.err" >&2; exit 1; }
  echo $(( $(now) - t0 ))
  "$ks" delete -p "a$i" >/dev/null
done > "$work/add"
med[add]=$(median s 2 < "$work/add")
echo "docker, node add of one agent to a running cluster → Ready (median of $runs): ${med[add]} s ($(awk -v a="${med[add]}" -v b="${med[1]}" 'BEGIN {printf "%.2f", a / b}')x a one-node start)"

# Upgrades: the phases of `upgrade -o json` (fetch, stop + snapshot of every
# node, swap, every node up on the new release one after another). A home
# of its own for each (a home that has seen the channel's version 2 refuses
# version 1 from then on), the new release fetched before.
phases() { python3 -c "import json,sys
for l in sys.stdin:
    v=json.loads(l)
    if v.get('result')=='done':
        t=v['timings']; print(v['elapsed_ms'], t['fetch_ms'], t['snapshot_ms'], t['swap_ms'], t['ready_ms'])"; }
for n in 1 3; do
  for i in $(seq "$runs"); do
    (
      export KUBESTRAP_HOME=$work/home-u$n-$i
      "$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
      start_once "u$n-$i" "$n" --driver docker >/dev/null
      "$ks" fetch --manifest "$art/next.toml" >/dev/null
      "$ks" -o json upgrade -p "u$n-$i" --manifest "$art/next.toml" | phases
      "$ks" delete -p "u$n-$i" >/dev/null
    )
  done > "$work/u$n"
done
col() { awk -v c="$1" '{print $c}' "$2" | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "docker, upgrade 1.33.1 -> 1.33.2 of a running cluster (median of $runs, ms):"
for n in 1 3; do
  echo "  $n node(s): in all $(col 1 "$work/u$n"); fetch $(col 2 "$work/u$n"), stop + snapshot $(col 3 "$work/u$n"), swap $(col 4 "$work/u$n"), every node up $(col 5 "$work/u$n")"
done
echo "  3 nodes / 1 node: $(awk -v a="$(col 1 "$work/u3")" -v b="$(col 1 "$work/u1")" 'BEGIN {printf "%.2f", a / b}')x in all, $(awk -v a="$(col 3 "$work/u3")" -v b="$(col 3 "$work/u1")" 'BEGIN {printf "%.2f", a / b}')x the stop + snapshot"
"$ks" delete -p warm >/dev/null

# NODES_BENCH_QEMU=0: the docker figures only.
[ "${NODES_BENCH_QEMU:-1}" = 0 ] && exit 0
qruns=3
for n in 1 2; do
  for i in $(seq "$qruns"); do
    start_once "q$n-$i" "$n" --driver qemu --accel tcg --memory 512 --cpus 1
    if [ "$n" = 2 ] && [ "$i" = 1 ]; then
      ps -eo rss,args | awk '$2 ~ /qemu-system/ && /kubestrap-q2-1/ {print $1 " KiB " ($0 ~ /kubestrap-q2-1-m02/ ? "agent" : "server")}' > "$work/mem-qemu"
    fi
    "$ks" delete -p "q$n-$i" >/dev/null
  done > "$work/q$n"
  med[q$n]=$(median s 2 < "$work/q$n")
done
echo "qemu (TCG, 512 MiB, 1 CPU each), new profile → every node Ready (median of $qruns):"
echo "  1 VM:  ${med[q1]} s"
echo "  2 VMs: ${med[q2]} s ($(awk -v a="${med[q2]}" -v b="${med[q1]}" 'BEGIN {printf "%.2f", a / b}')x one VM)"
echo "  resident set per VM's qemu (2 VMs):"
sed 's/^/    /' "$work/mem-qemu"
