# Sourced by the lifecycle, docker and qemu benchmarks: the set-up and the
# helpers they share. Sets `top` (the checkout), `ks` (the release kubestrap,
# built here; KUBESTRAP_BENCH_KS names another build to measure instead,
# such as the one before a change), `work` (a temporary directory) with KUBESTRAP_HOME and
# KUBECONFIG inside it, and removes every cluster and the directory on exit
# (after the script's own `bench_cleanup`, if it defines one).
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ks=${KUBESTRAP_BENCH_KS:-$top/target/release/kubestrap}
work=$(mktemp -d)
export KUBESTRAP_HOME=$work/home KUBECONFIG=$work/kubeconfig
cleanup() {
  if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi
  "$ks" delete --all >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
(cd "$top" && cargo build --quiet --release --workspace --bins)

now() { date +%s%N; }
# median UNIT DECIMALS: the median of the nanosecond figures on stdin, in
# UNIT (ms or s), with DECIMALS digits after the point.
median() {
  local div; case $1 in ms) div=1e6 ;; s) div=1e9 ;; *) echo "median: unit ms or s" >&2; return 2 ;; esac
  sort -n | awk -v div="$div" -v fmt="%.$2f" '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf fmt, m/div}'
}
# standin_tarball DIR [VERSION]: the release stand-in as a localkube
# artifact reporting VERSION (default v1.33.1+standin),
# DIR/standin.tar.zst (reproducible tar, zstd -3).
standin_tarball() {
  mkdir -p "$1/stage"
  cp "$top/target/release/localkube-standin" "$1/stage/" && echo "${2:-v1.33.1+standin}" > "$1/stage/version.txt"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1/stage" -cf - localkube-standin version.txt | zstd -q -3 -o "$1/standin.tar.zst"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
machine() { echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"; }
