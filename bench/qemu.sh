#!/usr/bin/env bash
# qemu driver benchmark: cold start, suspend, resume and shutdown of a VM
# cluster (the stand-in localkube in the base image), each against qemu
# itself doing the same in the same run, plus memory and sizes.
#
#   cold start: `kubestrap start` of a shut-down VM, to the apiserver ready
#       vs the very same qemu command line (run/launch.toml) run by hand until
#       /readyz answers 200
#   resume: `kubestrap start` of a suspended VM, to ready
#       vs that command line with `-loadvm` run by hand until /readyz answers
#   suspend: `kubestrap stop` (savevm + quit); shutdown: `kubestrap stop --shutdown`
#   memory: qemu's resident set with the stand-in running; sizes of the
#       artifacts, the config disk and the data disk (allocated)
#
# Usage: bench/qemu.sh [RUNS] [ACCEL]   (default 5, tcg). Needs curl, zstd
# and what ci/vm/build.sh needs.
set -euo pipefail
runs=${1:-5}
accel=${2:-tcg}
sp=
bench_cleanup() { if [ -n "$sp" ]; then kill -9 "$sp" 2>/dev/null || true; fi; }
. "$(dirname "$0")/lib.sh"
[ -n "$(ls "$top"/target/vm/base-*.tar.zst 2>/dev/null)" ] || "$top/ci/vm/build.sh" "$top/target/vm" >/dev/null
manifest=$(KUBESTRAP_VM_ARTIFACTS=$top/target/vm "$top/ci/dev-manifest.sh" "$work/artifacts" v1.33.1+standin 1 release)
"$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
port=$(free_port)
"$ks" start --driver qemu --accel "$accel" --manifest "$manifest" --port "$port" >/dev/null 2>&1

profile=$KUBESTRAP_HOME/profiles/kubestrap
pki=$profile/pki
ready() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$port/readyz" || true)" = 200 ]; }

rss_kib=$(ps -o rss= -p "$(sed -n 's/^pid = \([0-9]*\)$/\1/p' "$profile/run/localkube.pid" | head -1)" | tr -d ' ')

# qemu's own command line, as kubestrap ran it, to run by hand.
launch=$profile/run/launch.toml
program=$(sed -n 's/^program = "\(.*\)"$/\1/p' "$launch")
mapfile -t qargs < <(python3 -c 'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); print("\n".join(d["args"]))' "$launch")
module_dir=$(python3 -c 'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); print(dict(d.get("env",[])).get("QEMU_MODULE_DIR",""))' "$launch")
by_hand() {  # extra qemu args...
  t0=$(now)
  (cd "$profile/vm" && QEMU_MODULE_DIR=$module_dir exec "$program" "${qargs[@]}" "$@" >/dev/null 2>&1) & sp=$!
  until ready; do sleep 0.02; done
  echo $(( $(now) - t0 ))
  kill -9 "$sp" 2>/dev/null; wait "$sp" 2>/dev/null || true; sp=
}

cold=(); cold_base=(); resume=(); resume_base=(); suspend=(); shutdown=()
for _ in $(seq "$runs"); do
  t0=$(now); "$ks" stop --shutdown >/dev/null; shutdown+=($(( $(now) - t0 )))
  cold_base+=("$(by_hand)")
  t0=$(now); "$ks" start >/dev/null 2>&1; cold+=($(( $(now) - t0 )))
  t0=$(now); "$ks" stop >/dev/null; suspend+=($(( $(now) - t0 )))
  resume_base+=("$(by_hand -loadvm kubestrap-suspend)")
  t0=$(now); "$ks" start >/dev/null 2>&1; resume+=($(( $(now) - t0 )))
done

size() { stat -c %s "$1"; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b/1048576}'; }
echo "machine: $(machine); accelerator: $accel; runs: $runs (medians)"
printf 'cold start to ready:   kubestrap %ss   qemu by hand %ss\n' "$(printf '%s\n' "${cold[@]}" | median s 2)" "$(printf '%s\n' "${cold_base[@]}" | median s 2)"
printf 'resume to ready:       kubestrap %ss   qemu -loadvm by hand %ss\n' "$(printf '%s\n' "${resume[@]}" | median s 2)" "$(printf '%s\n' "${resume_base[@]}" | median s 2)"
printf 'suspend (stop):        %ss\n' "$(printf '%s\n' "${suspend[@]}" | median s 2)"
printf 'shutdown (stop --shutdown): %ss\n' "$(printf '%s\n' "${shutdown[@]}" | median s 2)"
echo "qemu resident memory (stand-in running, -m 2048): $(mib $((rss_kib * 1024)))"
echo "hypervisor artifact: $(mib "$(size "$(ls "$top"/target/vm/hypervisor-*.tar.zst)")"), base image: $(mib "$(size "$(ls "$top"/target/vm/base-*.tar.zst)")")"
echo "config disk: $(mib "$(size "$profile/vm/config.tar")"), data disk allocated: $(du -h "$profile/vm/disk/data.qcow2" | cut -f1) (virtual 40 GiB)"
