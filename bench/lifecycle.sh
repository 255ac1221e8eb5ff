#!/usr/bin/env bash
# Lifecycle benchmark (issue 4): kubestrap's own overhead on `start` and the
# latency of `status`, each against a baseline measured in the same run.
#
#   start overhead = median(`kubestrap start` of a stopped profile, warm cache)
#                  - median(stand-in launched by hand until /readyz answers 200)
#   status latency = median(`kubestrap status`) vs median(curl of /readyz with
#                    the same client certificate)
#
# With --compare DIR, a second kubestrap (DIR/kubestrap: another build, say
# the one before a change) is measured in the same run, each start and
# status of one interleaved with the other's, in a home of its own.
#
# Usage: bench/lifecycle.sh [RUNS] [--compare DIR]   (default 15). Needs curl and zstd.
set -euo pipefail
runs=${1:-15}
other=
if [ "${2:-}" = --compare ]; then other=$(cd "$3" && pwd)/kubestrap; fi
sp=
bench_cleanup() { if [ -n "$sp" ]; then kill "$sp" 2>/dev/null || true; fi; }
. "$(dirname "$0")/lib.sh"
manifest=$("$top/ci/dev-manifest.sh" "$work/artifacts" v1.33.1+standin 1 release)
"$ks" trust add "$top/ci/dev-keys/dev.pub" 2>/dev/null
port=$(free_port)
"$ks" start --manifest "$manifest" --port "$port" >/dev/null 2>&1
"$ks" stop >/dev/null

pki=$KUBESTRAP_HOME/profiles/kubestrap/pki
comp=$(dirname "$(find "$KUBESTRAP_HOME/components" -name localkube-standin -type f | head -1)")
curl_ready() { curl -s -o /dev/null -w '%{http_code}' --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$port/readyz" || true; }

# Baseline: the stand-in by itself, from exec to its first 200 on /readyz.
base=()
for _ in $(seq "$runs"); do
  data=$(mktemp -d -p "$work")
  t0=$(now)
  "$comp/localkube-standin" server --data-dir "$data" --https-listen-port "$port" --tls-cert-file "$pki/apiserver.crt" \
    --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" 2>/dev/null & sp=$!
  until [ "$(curl_ready)" = 200 ]; do :; done
  base+=($(( $(now) - t0 )))
  kill "$sp"; wait "$sp" 2>/dev/null || true; sp=
done

# kubestrap start of the stopped profile (manifest re-verified, artifacts checked, PKI reused).
# The "components unpacked" step is where what will run is re-hashed; its
# baseline is sha256sum of the same tree.
ks_start=(); rehash=(); sums=()
step_ms() { python3 -c 'import json,sys
for l in sys.stdin:
    e = json.loads(l)
    if e.get("event") == "step" and e.get("step") == sys.argv[1]: print(int(e["elapsed_ms"] * 1e6))' "$1"; }
for _ in $(seq "$runs"); do
  t0=$(now); "$ks" start -o json > "$work/start.json" 2>/dev/null; ks_start+=($(( $(now) - t0 )))
  rehash+=("$(step_ms "components unpacked" < "$work/start.json")")
  "$ks" stop >/dev/null
  t0=$(now); find "$comp" -type f -exec sha256sum {} + >/dev/null; sums+=($(( $(now) - t0 )))
done

"$ks" start >/dev/null 2>&1
ks_status=(); curl_status=()
for _ in $(seq "$runs"); do
  t0=$(now); "$ks" status >/dev/null; ks_status+=($(( $(now) - t0 )))
  t0=$(now); curl_ready >/dev/null; curl_status+=($(( $(now) - t0 )))
done

# The other build, interleaved with this one (each in its own home and port).
if [ -n "$other" ]; then
  home_this=$KUBESTRAP_HOME home_other=$work/home-other port_other=$(free_port)
  "$ks" stop >/dev/null
  KUBESTRAP_HOME=$home_other "$other" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
  KUBESTRAP_HOME=$home_other "$other" start --manifest "$manifest" --port "$port_other" >/dev/null 2>&1
  KUBESTRAP_HOME=$home_other "$other" stop >/dev/null
  a_start=(); b_start=(); a_status=(); b_status=()
  for _ in $(seq "$runs"); do
    t0=$(now); "$ks" start >/dev/null 2>&1; a_start+=($(( $(now) - t0 )))
    t0=$(now); "$ks" status >/dev/null; a_status+=($(( $(now) - t0 )))
    "$ks" stop >/dev/null
    export KUBESTRAP_HOME=$home_other
    t0=$(now); "$other" start >/dev/null 2>&1; b_start+=($(( $(now) - t0 )))
    t0=$(now); "$other" status >/dev/null; b_status+=($(( $(now) - t0 )))
    "$other" stop >/dev/null
    export KUBESTRAP_HOME=$home_this
  done
  KUBESTRAP_HOME=$home_other "$other" delete --all >/dev/null 2>&1 || true
fi

b=$(printf '%s\n' "${base[@]}" | median ms 1); s=$(printf '%s\n' "${ks_start[@]}" | median ms 1)
rh=$(printf '%s\n' "${rehash[@]}" | median ms 1); sm=$(printf '%s\n' "${sums[@]}" | median ms 1)
st=$(printf '%s\n' "${ks_status[@]}" | median ms 1); cs=$(printf '%s\n' "${curl_status[@]}" | median ms 1)
echo "machine: $(machine), $runs runs, medians"
printf '%-44s %9s ms\n' "stand-in alone, exec -> /readyz 200 (baseline)" "$b"
printf '%-44s %9s ms\n' "kubestrap start (stopped profile, warm cache)" "$s"
printf '%-44s %9s ms   (target <= 100)\n' "kubestrap overhead (start - baseline)" "$(awk "BEGIN{printf \"%.1f\", $s-$b}")"
printf '%-44s %9s ms   (%s files, %s KiB)\n' "  of which: re-hash what will run" "$rh" "$(find "$comp" -type f | wc -l)" "$(du -sk "$comp" | cut -f1)"
printf '%-44s %9s ms\n' "  sha256sum of the same tree (baseline)" "$sm"
printf '%-44s %9s ms   (target <= 50)\n' "kubestrap status (running cluster)" "$st"
printf '%-44s %9s ms   (ratio %.2fx)\n' "curl /readyz with the admin cert (baseline)" "$cs" "$(awk "BEGIN{print $st/$cs}")"
if [ -n "$other" ]; then
  as=$(printf '%s\n' "${a_start[@]}" | median ms 1); bs=$(printf '%s\n' "${b_start[@]}" | median ms 1)
  at=$(printf '%s\n' "${a_status[@]}" | median ms 1); bt=$(printf '%s\n' "${b_status[@]}" | median ms 1)
  echo "interleaved with $other:"
  printf '%-44s %9s ms   vs %s ms (ratio %.2fx)\n' "  start (stopped profile): this build" "$as" "$bs" "$(awk "BEGIN{print $as/$bs}")"
  printf '%-44s %9s ms   vs %s ms (ratio %.2fx)\n' "  status (running): this build" "$at" "$bt" "$(awk "BEGIN{print $at/$bt}")"
fi
