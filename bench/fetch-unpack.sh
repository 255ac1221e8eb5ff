#!/usr/bin/env bash
# Benchmark for issue 2: kubestrap's verified fetch and safe unpack against
# the plain tools, measured in the same run on the same machine.
#
#   (a) fetch:  `kubestrap fetch` of a ~200 MiB artifact from a loopback HTTP
#               server into a fresh home (download + sha256 + size check +
#               fsync + rename)      vs  `curl -s -o F URL && sha256sum F`
#   (b) unpack: `kubestrap cache unpack` of a ~200 MiB tar.zst already in the
#               cache (decompress + safety checks + per-file sha256 +
#               .complete + rename)  vs  `tar --zstd -xf A -C D`
#
# Usage:
#   bench/fetch-unpack.sh                 # uses target/release/kubestrap if built, else target/debug
#   KUBESTRAP=/path/to/kubestrap bench/fetch-unpack.sh
#   RUNS=5 SIZE_MIB=200 BENCH_DIR=/var/tmp bench/fetch-unpack.sh
#
# Needs: python3 (loopback server, data generator), curl, sha256sum, GNU tar,
# zstd; hyperfine if present (`apt-get install -y hyperfine`), else a timing
# loop. Everything lives in a temp dir that is removed on exit, together with
# the server. Takes about 1-3 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-200}
if [[ -z "${KUBESTRAP:-}" ]]; then
    if [[ -x "$ROOT/target/release/kubestrap" ]]; then KUBESTRAP="$ROOT/target/release/kubestrap"; else KUBESTRAP="$ROOT/target/debug/kubestrap"; fi
fi
[[ -x "$KUBESTRAP" ]] || { echo "no kubestrap binary at $KUBESTRAP: run \`cargo build --release -p kubestrap\` (or set KUBESTRAP)" >&2; exit 2; }
for tool in python3 curl sha256sum tar zstd; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/kubestrap-bench.XXXXXX")
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

export NO_COLOR=1
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy KUBESTRAP_HOME KUBESTRAP_MANIFEST || true
ks() { "$KUBESTRAP" "$@"; }
log() { printf '%s\n' "$*" >&2; }

# --- data ------------------------------------------------------------------
# Per MiB: 768 KiB random + 256 KiB zeros, so zstd has something to do
# (~25% saving) and the bytes are not trivially compressible.
log "generating data (${SIZE_MIB} MiB raw artifact, ~${SIZE_MIB} MiB tar.zst)..."
mkdir -p "$W/srv" "$W/tree/bin" "$W/tree/data"
python3 - "$W" "$SIZE_MIB" <<'EOF'
import os, sys
w, size = sys.argv[1], int(sys.argv[2])
zeros = bytes(256 * 1024)
def block():
    return os.urandom(768 * 1024) + zeros
with open(f"{w}/srv/artifact.bin", "wb") as f:
    for _ in range(size):
        f.write(block())
# The tree for the tar.zst: compressed size ~ size MiB => expanded ~4/3 of it.
expanded = size * 4 // 3
files = [("bin/localkube", expanded // 4)]
rest = expanded - expanded // 4
n = 8
files += [(f"data/part-{i}", rest // n + (1 if i < rest % n else 0)) for i in range(n)]
for path, mib in files:
    with open(f"{w}/tree/{path}", "wb") as f:
        for _ in range(mib):
            f.write(block())
os.chmod(f"{w}/tree/bin/localkube", 0o755)
with open(f"{w}/srv/kubectl", "wb") as f:
    f.write(os.urandom(4096))
EOF
tar -C "$W/tree" --sort=name --owner=0 --group=0 --mtime=@0 -cf - bin data | zstd -q -3 -T0 -o "$W/srv/artifact.tar.zst"
rm -rf "$W/tree"

# --- loopback server ---------------------------------------------------------
cat >"$W/server.py" <<'EOF'
import http.server, os, socket, sys
class H(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, src, dst):
        self.connection.sendfile(src)  # zero-copy, so the server is not the bottleneck
    def log_message(self, *a):
        pass
os.chdir(sys.argv[1])
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(sys.argv[2], "w") as f:
    f.write(str(s.server_address[1]))
s.serve_forever()
EOF
python3 "$W/server.py" "$W/srv" "$W/port" &
SERVER_PID=$!
for _ in $(seq 100); do [[ -s "$W/port" ]] && break; sleep 0.05; done
[[ -s "$W/port" ]] || { log "the loopback server did not start"; exit 1; }
BASE="http://127.0.0.1:$(cat "$W/port")"
curl -sf -o /dev/null "$BASE/kubectl" || { log "the loopback server does not answer"; exit 1; }

# --- manifests ---------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
printf 'program = "%s"\nargs = ["server", "--https-listen-port={port}"]\nready = "/readyz"\nstop-signal = "TERM"\nstop-timeout-s = 10\n' localkube > "$W/run-file.toml"
printf 'program = "%s"\nargs = ["server", "--https-listen-port={port}"]\nready = "/readyz"\nstop-signal = "TERM"\nstop-timeout-s = 10\n' bin/localkube > "$W/run-tar.toml"
manifest() { # manifest FILE VERSION LOCALKUBE_PATH BIN RUN — through the one manifest writer
    local lk=$3; [[ $4 == localkube ]] || lk="$3#$4"
    ks manifest new --out "$1" --channel bench --manifest-version "$2" --kubernetes 1.33.1 \
        --component "kubectl@1.33.1=$W/srv/kubectl" --url "kubectl=$BASE/kubectl" \
        --component "localkube@1.33.1+bench=$lk" --url "localkube=$BASE/$(basename "$3")" \
        --drivers localkube=native --run "$5" >/dev/null
}
mkdir -p "$W/keys"
ks manifest keygen --out "$W/keys" --name bench --unencrypted >/dev/null
ks --home "$W/home-template" trust add "$W/keys/bench.pub" 2>/dev/null
manifest "$W/fetch.toml" 1 "$W/srv/artifact.bin" localkube "$W/run-file.toml"
manifest "$W/unpack.toml" 2 "$W/srv/artifact.tar.zst" bin/localkube "$W/run-tar.toml"
ks manifest sign --key "$W/keys/bench.key" "$W/fetch.toml" >/dev/null
ks manifest sign --key "$W/keys/bench.key" "$W/unpack.toml" >/dev/null

# Sanity: both commands work before they are timed.
cp -a "$W/home-template" "$W/home-run"
ks --home "$W/home-run" fetch --manifest "$W/fetch.toml" >/dev/null 2>&1 || { log "kubestrap fetch failed:"; ks --home "$W/home-run" fetch --manifest "$W/fetch.toml"; exit 1; }
cp -a "$W/home-template" "$W/home-unpack"
ks --home "$W/home-unpack" fetch --manifest "$W/unpack.toml" >/dev/null 2>&1
if ! ks --home "$W/home-unpack" cache unpack --help >/dev/null 2>&1; then
    log "kubestrap has no \`cache unpack\` yet: the unpack comparison is skipped"
    HAVE_UNPACK=0
else
    HAVE_UNPACK=1
    ks --home "$W/home-unpack" cache unpack --manifest "$W/unpack.toml" >/dev/null 2>&1 || { log "kubestrap cache unpack failed:"; ks --home "$W/home-unpack" cache unpack --manifest "$W/unpack.toml"; exit 1; }
fi

# --- timing ------------------------------------------------------------------
# time_pair NAME PREPARE_A CMD_A PREPARE_B CMD_B  -> "median_a median_b min_a min_b max_a max_b"
time_pair() {
    local name=$1
    if command -v hyperfine >/dev/null; then
        hyperfine --style none --runs "$RUNS" --warmup 1 --export-json "$W/$name.json" \
            --prepare "$2" "$3" --prepare "$4" "$5" >/dev/null 2>&1 || { log "hyperfine failed for $name"; exit 1; }
        python3 - "$W/$name.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(" ".join(f"{x:.3f}" for x in (r[0]["median"], r[1]["median"], r[0]["min"], r[1]["min"], r[0]["max"], r[1]["max"])))
EOF
    else
        local i t0 t1 ta=() tb=()
        bash -c "$2" && bash -c "$3" >/dev/null 2>&1
        bash -c "$4" && bash -c "$5" >/dev/null 2>&1
        for i in $(seq "$RUNS"); do
            bash -c "$2"; t0=$(date +%s.%N); bash -c "$3" >/dev/null 2>&1; t1=$(date +%s.%N); ta+=("$(echo "$t1 - $t0" | bc)")
            bash -c "$4"; t0=$(date +%s.%N); bash -c "$5" >/dev/null 2>&1; t1=$(date +%s.%N); tb+=("$(echo "$t1 - $t0" | bc)")
        done
        python3 - "${ta[*]}" "${tb[*]}" <<'EOF'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
print(" ".join(f"{x:.3f}" for x in (statistics.median(a), statistics.median(b), min(a), min(b), max(a), max(b))))
EOF
    fi
}

KSQ=$(printf '%q' "$KUBESTRAP")
log "timing (a) fetch, $RUNS runs each..."
read -r fa fb fmina fminb fmaxa fmaxb < <(time_pair fetch \
    "rm -rf $W/home-run && cp -a $W/home-template $W/home-run" \
    "$KSQ --home $W/home-run fetch --manifest $W/fetch.toml" \
    "rm -f $W/curl.out" \
    "curl -s -o $W/curl.out $BASE/artifact.bin && sha256sum $W/curl.out")

if [[ $HAVE_UNPACK == 1 ]]; then
    log "timing (b) unpack, $RUNS runs each..."
    read -r ua ub umina uminb umaxa umaxb < <(time_pair unpack \
        "rm -rf $W/home-unpack/components" \
        "$KSQ --home $W/home-unpack cache unpack --manifest $W/unpack.toml" \
        "rm -rf $W/tarout && mkdir $W/tarout" \
        "tar --zstd -xf $W/srv/artifact.tar.zst -C $W/tarout")
    # The same durability as kubestrap (which syncs before it marks a tree
    # complete): tar, then a sync of the filesystem it wrote to.
    read -r sa sb smina sminb smaxa smaxb < <(time_pair unpack-synced \
        "rm -rf $W/home-unpack/components" \
        "$KSQ --home $W/home-unpack cache unpack --manifest $W/unpack.toml" \
        "rm -rf $W/tarout && mkdir $W/tarout" \
        "tar --zstd -xf $W/srv/artifact.tar.zst -C $W/tarout && sync -f $W/tarout")
fi

# --- report ------------------------------------------------------------------
mib() { python3 -c "print(f'{$1/1048576:.0f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
profile=release
[[ "$KUBESTRAP" == */debug/* ]] && profile="debug (deps opt-level 2)"
echo "kubestrap fetch/unpack benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:   $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
echo "kubestrap: $("$KUBESTRAP" --version) [$profile] $KUBESTRAP"
echo "baseline:  $(curl --version | head -1 | cut -d' ' -f1-2), $(sha256sum --version | head -1), $(tar --version | head -1), $(zstd --version | grep -o 'v[0-9.]*' | head -1 | sed 's/^/zstd /')"
echo "timer:     $(command -v hyperfine >/dev/null && hyperfine --version || echo 'date +%s.%N loop'), $RUNS runs + 1 warm-up, median (min-max) seconds"
echo "data:      artifact.bin $(mib "$(size "$W/srv/artifact.bin")") MiB; artifact.tar.zst $(mib "$(size "$W/srv/artifact.tar.zst")") MiB -> $(mib $((SIZE_MIB * 4 / 3 * 1048576))) MiB in 9 files; loopback python3 sendfile server"
echo
printf '%-8s %-34s %-22s %-44s %-22s %s\n' "case" "kubestrap" "median (min-max)" "baseline" "median (min-max)" "kubestrap/baseline"
printf '%-8s %-34s %-22s %-44s %-22s %s\n' "fetch" "kubestrap fetch (fresh home)" "$fa ($fmina-$fmaxa)" "curl -o F && sha256sum F" "$fb ($fminb-$fmaxb)" "$(ratio "$fa" "$fb")"
if [[ $HAVE_UNPACK == 1 ]]; then
    printf '%-8s %-34s %-22s %-44s %-22s %s\n' "unpack" "kubestrap cache unpack (cached)" "$ua ($umina-$umaxa)" "tar --zstd -xf" "$ub ($uminb-$umaxb)" "$(ratio "$ua" "$ub")"
    printf '%-8s %-34s %-22s %-44s %-22s %s\n' "unpack" "kubestrap cache unpack (cached)" "$sa ($smina-$smaxa)" "tar --zstd -xf && sync -f (same durability)" "$sb ($sminb-$smaxb)" "$(ratio "$sa" "$sb")"
else
    printf '%-8s %s\n' "unpack" "pending: this kubestrap has no \`cache unpack\`"
fi
echo
echo "kubestrap fetch also fsyncs the blob and renames it into the store; curl does not sync."
echo "kubestrap cache unpack also verifies the archive's sha256, checks every entry, hashes every file for .complete and syncs."
