#!/usr/bin/env bash
# Benchmark for offline bundles: importing a bundle's artifacts into an
# empty home, against the plain tools on the same bytes, in the same run.
#
#   (a) import: `kubestrap fetch --from-bundle B` into an empty home (each
#       artifact streamed from the bundle into the store, sha256 and size
#       checked in the same pass, fsynced, renamed)
#         vs `unzip -o B artifacts/* -d X && sha256sum X/artifacts/*`
#         vs `sha256sum`, and `openssl dgst -sha256` of the same bytes from
#            the page cache, one after the other and — the hashing limit,
#            like for like — one process per artifact at once, as the import
#            hashes them: how close import gets to hashing alone
#   (b) empty home -> ready cluster from the bundle, in a network namespace
#       with only loopback (stand-in localkube; `ip netns`, root)
#   (c) bundle size overhead over the executable + the artifacts
#
# Usage: bench/bundle.sh [RUNS]   (default 9; SIZE_MIB=300). Release build:
# `cargo build --release -p kubestrap -p localkube-standin`.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-9}
SIZE_MIB=${SIZE_MIB:-300}
ks=$top/target/release/kubestrap
[[ -x $ks ]] || { echo "build first: cargo build --release -p kubestrap -p localkube-standin" >&2; exit 2; }
for tool in hyperfine unzip sha256sum openssl python3 zstd; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 2; }; done
W=$(mktemp -d "${BENCH_DIR:-/tmp}/kubestrap-bundle-bench.XXXXXX")
NS=ks-bench-$$
cleanup() {
    ip netns exec "$NS" env KUBESTRAP_HOME="$W/ns-home" KUBECONFIG="$W/ns-kc" "$ks" delete --all >/dev/null 2>&1 || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM
export NO_COLOR=1
unset KUBESTRAP_HOME KUBESTRAP_MANIFEST KUBECONFIG || true
log() { printf '%s\n' "$*" >&2; }

log "generating ${SIZE_MIB} MiB of artifacts..."
mkdir -p "$W/art" "$W/keys"
python3 - "$W/art" "$SIZE_MIB" <<'EOF'
import os, sys
d, size = sys.argv[1], int(sys.argv[2])
for name, mib in (("kubectl", size // 3), ("localkube", size - size // 3)):
    with open(os.path.join(d, name), "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    os.chmod(os.path.join(d, name), 0o755)
EOF
printf 'program = "localkube"\nargs = ["server", "--https-listen-port={port}"]\nready = "/readyz"\nstop-signal = "TERM"\nstop-timeout-s = 10\n' > "$W/run.toml"
"$ks" manifest keygen --out "$W/keys" --name bench --unencrypted >/dev/null
"$ks" --home "$W/maker" trust add "$W/keys/bench.pub" 2>/dev/null
"$ks" manifest new --out "$W/m.toml" --channel bench --kubernetes 1.33.1 \
    --component "kubectl@1.33.1=$W/art/kubectl" --url kubectl=http://unreachable.invalid/kubectl \
    --component "localkube@1.33.1+bench=$W/art/localkube" --url localkube=http://unreachable.invalid/localkube \
    --drivers localkube=native --run "$W/run.toml" >/dev/null
"$ks" manifest sign --key "$W/keys/bench.key" "$W/m.toml" >/dev/null
"$ks" --home "$W/maker" bundle create --manifest "$W/m.toml" --artifacts "$W/art" --out "$W/bundle" >/dev/null
"$ks" --home "$W/template" trust add "$W/keys/bench.pub" 2>/dev/null
# For (b): a bundle of the development manifest (stand-in localkube + kubectl).
dm=$("$top/ci/dev-manifest.sh" "$W/dev" v1.33.1+standin 1 release 2>/dev/null)
"$ks" --home "$W/maker" trust add "$top/ci/dev-keys/dev.pub" 2>/dev/null
"$ks" --home "$W/maker" bundle create --manifest "$dm" --out "$W/dev-bundle" >/dev/null
"$ks" --home "$W/template" trust add "$top/ci/dev-keys/dev.pub" 2>/dev/null

log "timing (a) import, $RUNS runs each..."
KSQ=$(printf '%q' "$ks")
hyperfine --style none --runs "$RUNS" --warmup 1 --export-json "$W/import.json" \
    --prepare "rm -rf $W/h && cp -a $W/template $W/h && sync" "$KSQ --home $W/h fetch --from-bundle $W/bundle" \
    --prepare "rm -rf $W/x && sync" "unzip -qo $W/bundle 'artifacts/*' -d $W/x && sha256sum $W/x/artifacts/*" \
    --prepare "cat $W/art/kubectl $W/art/localkube >/dev/null" "sha256sum $W/art/kubectl $W/art/localkube" \
    --prepare "cat $W/art/kubectl $W/art/localkube >/dev/null" "openssl dgst -sha256 $W/art/kubectl $W/art/localkube" \
    --prepare "cat $W/art/kubectl $W/art/localkube >/dev/null" "openssl dgst -sha256 $W/art/kubectl >/dev/null & openssl dgst -sha256 $W/art/localkube >/dev/null & wait" \
    >/dev/null 2>&1 || { log "hyperfine failed"; exit 1; }
read -r ki ku ks_ ko kp kimin kumin ksmin komin kpmin kimax kumax ksmax komax kpmax < <(python3 - "$W/import.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(" ".join(f"{x:.3f}" for x in [r[i][k] for k in ("median", "min", "max") for i in range(5)]))
EOF
)

cold=""
if ip netns add "$NS" 2>/dev/null && ip netns exec "$NS" ip link set lo up; then
    log "timing (b) empty home to a ready cluster in a namespace with only loopback..."
    times=()
    for i in $(seq 5); do
        rm -rf "$W/ns-home" && cp -a "$W/template" "$W/ns-home"
        # The stand-in as localkube: a bundle of the development manifest.
        t0=$(date +%s%N)
        ip netns exec "$NS" env KUBESTRAP_HOME="$W/ns-home" KUBECONFIG="$W/ns-kc" "$W/dev-bundle" start --port 9443 >/dev/null 2>&1 || true
        times+=($(( ($(date +%s%N) - t0) / 1000000 )))
        ip netns exec "$NS" env KUBESTRAP_HOME="$W/ns-home" KUBECONFIG="$W/ns-kc" "$ks" delete --all >/dev/null 2>&1 || true
    done
    cold=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
fi

size=$(stat -c %s "$W/bundle")
# The executable in front, as the bundle says (ci/dev-manifest.sh may have
# rebuilt kubestrap since it was written).
stub=$("$ks" --home "$W/template" bundle inspect -o json "$W/bundle" | python3 -c 'import json, sys
for l in sys.stdin:
    v = json.loads(l)
    if "stub" in v: print(v["stub"])')
art=$(( $(stat -c %s "$W/art/kubectl") + $(stat -c %s "$W/art/localkube") ))
echo "kubestrap bundle benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:   $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), $(df -T "$W" | awk 'NR==2 {print $2}') at $W"
echo "tools:     $(hyperfine --version), $(unzip -v | head -1 | cut -d' ' -f1-2), $(sha256sum --version | head -1); $RUNS runs + 1 warm-up, median (min-max) s"
echo "sha256:    kubestrap: $("$ks" __hash-info | cut -d' ' -f2-); $(openssl version | cut -d' ' -f1-2) (CPU flags: $(grep -m1 -o -w 'sha_ni\|avx2\|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '))"
echo "import:    $(nproc) CPU(s): artifacts are imported concurrently (up to --jobs 4), each fsynced before its rename"
echo "data:      2 artifacts, $(( art / 1048576 )) MiB (random bytes), bundle $(( size / 1048576 )) MiB"
echo
printf '%-58s %s\n' "kubestrap fetch --from-bundle (empty home, fsynced)" "$ki ($kimin-$kimax)"
printf '%-58s %s  -> kubestrap is %sx faster\n' "unzip -o artifacts/* && sha256sum (no sync)" "$ku ($kumin-$kumax)" "$(python3 -c "print(f'{$ku/$ki:.2f}')")"
printf '%-58s %s  -> kubestrap at %s%% of its speed\n' "sha256sum of the same bytes from the page cache" "$ks_ ($ksmin-$ksmax)" "$(python3 -c "print(f'{100*$ks_/$ki:.0f}')")"
printf '%-58s %s  -> kubestrap at %s%% of its speed\n' "openssl dgst -sha256 of the same bytes, one after the other" "$ko ($komin-$komax)" "$(python3 -c "print(f'{100*$ko/$ki:.0f}')")"
printf '%-58s %s  -> kubestrap at %s%% of its speed (the hashing limit)\n' "openssl dgst -sha256, one per artifact at once (as import)" "$kp ($kpmin-$kpmax)" "$(python3 -c "print(f'{100*$kp/$ki:.0f}')")"
[[ -n $cold ]] && printf '%-58s %s ms (median of 5)\n' "empty home -> ready cluster from a bundle (netns, stand-in)" "$cold"
printf '%-58s %s bytes = %s%% (stub %s + artifacts %s)\n' "bundle overhead" "$(( size - stub - art ))" "$(python3 -c "print(f'{100*($size-$stub-$art)/$size:.4f}')")" "$stub" "$art"
