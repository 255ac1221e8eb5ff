#!/usr/bin/env bash
# Upgrade benchmark: `kubestrap upgrade` of a running cluster from the
# stand-in reporting 1.32.4 to the one reporting 1.33.4, split into its
# phases (fetch, snapshot, swap, ready) against the new stand-in's own time
# from exec to ready; and the snapshot of data directories of 1 MiB,
# 100 MiB and 1 GiB against `cp -a` of the same directory, in the same run.
#
# Usage: bench/upgrade.sh [RUNS]   (default 5). Builds the release binaries.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-5}
work=$(mktemp -d "${BENCH_DIR:-/tmp}/kubestrap-upgrade-bench.XXXXXX")
ks=$top/target/release/kubestrap
export KUBECONFIG=$work/kubeconfig NO_COLOR=1
cleanup() {
    for h in "$work"/home-*; do [ -d "$h" ] && KUBESTRAP_HOME=$h "$ks" delete --all >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
m32=$("$top/ci/dev-manifest.sh" "$work/r32" v1.32.4+standin 1 release 2>/dev/null)
m33=$("$top/ci/dev-manifest.sh" "$work/r33" v1.33.4+standin 2 release 2>/dev/null)
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
json_field() { python3 -c "import json,sys
for l in sys.stdin:
    v=json.loads(l)
    if v.get('result')=='done':
        t=v['timings']; print(t['fetch_ms'], t['snapshot_ms'], t['swap_ms'], t['ready_ms'], v['elapsed_ms'])"; }
fresh_home() { # fresh_home NAME DATA_MIB: a running 1.32 cluster whose data dir holds DATA_MIB of bytes
    local h=$work/home-$1
    rm -rf "$h"; export KUBESTRAP_HOME=$h
    "$ks" trust add "$top/ci/dev-keys/dev.pub" 2>/dev/null
    "$ks" start --manifest "$m32" --port "$port" >/dev/null 2>&1
    "$ks" fetch --manifest "$m33" >/dev/null 2>&1   # the fetch phase is then the cached check
    if [ "$2" -gt 0 ]; then head -c "$(( $2 << 20 ))" /dev/urandom > "$h/profiles/kubestrap/data/ballast"; fi
}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The new stand-in alone: exec -> /readyz 200.
fresh_home base 0
pki=$KUBESTRAP_HOME/profiles/kubestrap/pki
"$ks" stop >/dev/null
"$ks" cache unpack --manifest "$m33" >/dev/null 2>&1
comp=$(dirname "$(grep -l 'v1.33.4' "$KUBESTRAP_HOME"/components/*/version.txt)")
alone=()
for _ in $(seq "$runs"); do
    d=$(mktemp -d -p "$work"); t0=$(date +%s%N)
    "$comp/localkube-standin" server --data-dir "$d" --https-listen-port "$port" --tls-cert-file "$pki/apiserver.crt" \
        --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" 2>/dev/null & sp=$!
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$port/readyz" || true)" = 200 ]; do :; done
    alone+=($(( ($(date +%s%N) - t0) / 1000000 ))); kill "$sp"; wait "$sp" 2>/dev/null || true
done
"$ks" delete >/dev/null

# Upgrades with a small data dir.
F=(); S=(); W=(); R=(); T=()
for i in $(seq "$runs"); do
    fresh_home "u$i" 0
    read -r f s w r t < <("$ks" -o json upgrade --manifest "$m33" | json_field)
    F+=("$f"); S+=("$s"); W+=("$w"); R+=("$r"); T+=("$t")
    "$ks" delete >/dev/null
done

# Snapshots of 1 MiB, 100 MiB, 1 GiB data dirs (within an upgrade), and cp -a.
snap_rows=()
for mib in 1 100 1024; do
    fresh_home "s$mib" "$mib"
    read -r _ s _ _ _ < <("$ks" -o json upgrade --manifest "$m33" | json_field)
    data=$KUBESTRAP_HOME/profiles/kubestrap/data
    sync; t0=$(date +%s%N); cp -a "$data" "$work/cp-$mib" && sync -f "$work/cp-$mib"; cp_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    reflinked=$(KUBESTRAP_HOME=$KUBESTRAP_HOME "$ks" -o json snapshot list | python3 -c "import json,sys; print(sum(json.loads(l)['reflinked_files'] for l in sys.stdin))")
    snap_rows+=("$(printf '%-28s %8s ms   cp -a + sync -f: %6s ms   reflinked files: %s' "snapshot of a ${mib} MiB data dir" "$s" "$cp_ms" "$reflinked")")
    rm -rf "$work/cp-$mib"; "$ks" delete >/dev/null
done

m() { printf '%s\n' "$@" | median; }
echo "kubestrap upgrade benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(df -T "$work" | awk 'NR==2 {print $2}') at $work; $runs runs, medians"
echo
printf '%-44s %6s ms\n' "new stand-in alone, exec -> ready (baseline)" "$(m "${alone[@]}")"
printf '%-44s %6s ms\n' "upgrade, in all" "$(m "${T[@]}")"
printf '%-44s %6s ms\n' "  fetch (verify + unpack the new release)" "$(m "${F[@]}")"
printf '%-44s %6s ms\n' "  snapshot (stop the old + copy its data)" "$(m "${S[@]}")"
printf '%-44s %6s ms\n' "  swap (manifest pointer)" "$(m "${W[@]}")"
printf '%-44s %6s ms\n' "  ready (start the new + version check)" "$(m "${R[@]}")"
echo
printf '%s\n' "${snap_rows[@]}"
