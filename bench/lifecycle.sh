#!/usr/bin/env bash
# Lifecycle benchmark (issue 4): kubestrap's own overhead on `start` and the
# latency of `status`, each against a baseline measured in the same run.
#
#   start overhead = median(`kubestrap start` of a stopped profile, warm cache)
#                  - median(stand-in launched by hand until /readyz answers 200)
#   status latency = median(`kubestrap status`) vs median(curl of /readyz with
#                    the same client certificate)
#
# Usage: bench/lifecycle.sh [RUNS]   (default 15). Needs curl and zstd.
set -euo pipefail
runs=${1:-15}
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
