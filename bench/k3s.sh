#!/usr/bin/env bash
# What k3s's fidelity costs, each against a baseline in the same run:
#
#   native stop of a k3s with leftovers: `kubestrap stop` of a native k3s-mode
#       stand-in running a container (a shim and its pod in their own session,
#       mounts under /run/k3s, /var/lib/kubelet and /run/netns, cni0, a veth,
#       flannel.1, the node bridge, KUBE-/CNI-/FLANNEL chains, /var/lib/cni,
#       /run/flannel), what it removed, vs the same leftovers cleaned by a
#       shell script doing what k3s's k3s-killall.sh does (SIGTERM and wait,
#       kill -9 of the shims' process trees, umount, ip link delete, rm -rf,
#       iptables-save | grep -v | iptables-restore)
#   native delete of such a k3s (stop, cleanup, machine-wide paths, files)
#   VM boot: time to ready of the same qemu command line with this base
#       image (initramfs → tmpfs switch_root, modprobe) and with the base
#       image of the commit before that change (built here from git), on a
#       fresh data disk (first boot: the guest formats it) and on a used one
#
# Usage: bench/k3s.sh [RUNS] [BEFORE_COMMIT]   (default 5, 6613269). Root,
# iptables, iproute2, curl, zstd, busybox-static, Docker (for the image) and
# what ci/vm/build.sh needs.
set -euo pipefail
runs=${1:-5}
before=${2:-6613269}
sp=
bench_cleanup() { if [ -n "$sp" ]; then kill -9 "$sp" 2>/dev/null || true; fi; }
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "bench/k3s.sh: the native driver's k3s needs root" >&2; exit 1; }
"$ks" trust add "$top/ci/dev-keys/dev.pub" >/dev/null 2>&1
kubectl=$(ls /usr/lib/google-cloud-sdk/bin/kubectl.1.33 2>/dev/null || command -v kubectl)

# The stand-in as k3s (its k3s mode), in the release channel's run section.
mkdir -p "$work/k3s"
cp "$top/target/release/localkube-standin" "$work/k3s/k3s"
echo "v1.33.1+k3s1" > "$work/k3s/version.txt"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/k3s" -cf - k3s version.txt | zstd -q -f -o "$work/k3s.tar.zst"
"$ks" manifest new --out "$work/k3s.toml" --channel bench --kubernetes 1.33.1 --component "kubectl@1.33.1=$kubectl" \
  --component "localkube@1.33.1+k3s1=$work/k3s.tar.zst#k3s" --run "$top/manifests/channel/k3s-run.toml" >/dev/null
"$ks" manifest sign --key "$top/ci/dev-keys/dev.key" "$work/k3s.toml" >/dev/null
# An image to run: busybox-static as a docker-archive.
mkdir -p "$work/img/bin"
cp /bin/busybox "$work/img/bin/"
tar -C "$work/img" -cf "$work/img.tar" bin
docker import "$work/img.tar" kubestrap-bench/img:1 >/dev/null
docker save -o "$work/image.tar" kubestrap-bench/img:1
docker image rm kubestrap-bench/img:1 >/dev/null

port=$(free_port)
up() {  # a running k3s with its container
  "$ks" start --driver native --manifest "$work/k3s.toml" --port "$port" >/dev/null 2>&1
}
up
"$ks" image load "$work/image.tar" >/dev/null
"$ks" stop >/dev/null

count_left() {
  {
    ps -eo stat=,args= | awk '$1 !~ /^Z/ && /\/run\/k3s\//'
    awk '$5 ~ "^/run/k3s|^/var/lib/kubelet|^/run/netns/cni-"' /proc/self/mountinfo
    ip -o link show | awk -F': ' '$2 ~ /^(cni0|flannel|veth|kubestrap-)/'
    iptables-save 2>/dev/null | grep -E '^:(KUBE-|CNI-|FLANNEL|KUBESTRAP-)'
  } | wc -l
}

# k3s-killall.sh's steps, in shell, for the baseline.
killall_sh() (
  set +e +o pipefail
  local pid=$1 shims kids
  kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
  shims=$(ps -e -o pid= -o args= | awk '$2 ~ /^containerd-shim/ && /\/run\/k3s\// {print $1}')
  pstree_of() { local p; for p in "$@"; do echo "$p"; pstree_of $(ps -o pid= --ppid "$p"); done; }
  kids=$(pstree_of $shims)
  [ -n "$kids" ] && kill -9 $kids 2>/dev/null
  awk '$2 ~ "^/run/k3s|^/var/lib/kubelet/pods|^/var/lib/kubelet/plugins|^/run/netns/cni-" {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount -f "$m" && rm -rf "$m"; done
  ip link show 2>/dev/null | grep 'master cni0' | while read -r _ iface _; do ip link delete "${iface%%@*}"; done
  for l in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do ip link delete "$l" 2>/dev/null || true; done
  rm -rf /var/lib/cni/ /run/flannel /run/k3s
  iptables-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | iptables-restore
  ip6tables-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | ip6tables-restore
)

stop_t=(); base_t=(); left_n=(); removed_n=()
for _ in $(seq "$runs"); do
  up
  left_n+=("$(count_left)")
  t0=$(now); "$ks" stop >/dev/null; stop_t+=($(( $(now) - t0 )))
  line=$(grep 'kubestrap: removed from the machine:' "$KUBESTRAP_HOME/profiles/kubestrap/logs/localkube.log" | tail -1)
  removed_n+=("$(echo "${line#*machine: }" | tr ',' '\n' | grep -c .)")
  [ "$(count_left)" = 0 ] || { echo "bench/k3s.sh: kubestrap stop left something" >&2; exit 1; }
  up
  pid=$(sed -n '/^\[localkube\]/,/^\[/ s/^pid = \([0-9]*\)$/\1/p' "$KUBESTRAP_HOME/profiles/kubestrap/run/localkube.pid" | head -1)
  t0=$(now); killall_sh "$pid" >/dev/null 2>&1; base_t+=($(( $(now) - t0 )))
  "$ks" stop >/dev/null  # the node bridge and guard, pid file: kubestrap's own
done
del_t=()
for _ in $(seq "$runs"); do
  up
  t0=$(now); "$ks" delete >/dev/null; del_t+=($(( $(now) - t0 )))
  [ "$(count_left)" = 0 ] || { echo "bench/k3s.sh: kubestrap delete left something" >&2; exit 1; }
  "$ks" start --driver native --manifest "$work/k3s.toml" --port "$port" >/dev/null 2>&1
  "$ks" image load "$work/image.tar" >/dev/null
  "$ks" stop >/dev/null
done
"$ks" delete >/dev/null

# ---- VM boots: this base image against the one before the tmpfs root ----
[ -n "$(ls "$top"/target/vm/base-*.tar.zst 2>/dev/null)" ] || "$top/ci/vm/build.sh" "$top/target/vm" >/dev/null
mkdir -p "$work/old/ci"
git -C "$top" show "$before:ci/vm/build.sh" > "$work/old/ci/build.sh"
git -C "$top" show "$before:ci/vm/init" > "$work/old/ci/init"
chmod +x "$work/old/ci/build.sh" "$work/old/ci/init"
"$work/old/ci/build.sh" "$work/old/out" "$top/target/vm/debs" >/dev/null
mkdir -p "$work/old/base" "$work/new/base"
zstd -dc "$work"/old/out/base-*.tar.zst | tar -x -C "$work/old/base"
zstd -dc "$top"/target/vm/base-*.tar.zst | tar -x -C "$work/new/base"
manifest=$(KUBESTRAP_VM_ARTIFACTS=$top/target/vm "$top/ci/dev-manifest.sh" "$work/artifacts" v1.33.1+standin 1 release)
vport=$(free_port)
"$ks" start -p vm --driver qemu --accel tcg --manifest "$manifest" --port "$vport" >/dev/null 2>&1
"$ks" stop -p vm --shutdown >/dev/null
profile=$KUBESTRAP_HOME/profiles/vm
pki=$profile/pki
ready() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$vport/readyz" || true)" = 200 ]; }
launch=$profile/run/launch.toml
program=$(sed -n 's/^program = "\(.*\)"$/\1/p' "$launch")
mapfile -t qargs < <(python3 -c 'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); print("\n".join(d["args"]))' "$launch")
module_dir=$(python3 -c 'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); print(dict(d.get("env",[])).get("QEMU_MODULE_DIR",""))' "$launch")
boot() {  # BASE_DIR DISK: ms to ready
  local args=() a
  for a in "${qargs[@]}"; do
    case $a in
      */vmlinuz) a=$1/vmlinuz ;;
      */initrd.img) a=$1/initrd.img ;;
      *data.qcow2*) a=${a//$profile\/vm\/disk\/data.qcow2/$2} ;;
    esac
    args+=("$a")
  done
  t0=$(now)
  (cd "$profile/vm" && QEMU_MODULE_DIR=$module_dir exec "$program" "${args[@]}" >/dev/null 2>&1) & sp=$!
  until ready; do sleep 0.02; done
  echo $(( $(now) - t0 ))
  kill -9 "$sp" 2>/dev/null; wait "$sp" 2>/dev/null || true; sp=
}
first_new=(); first_old=(); used_new=(); used_old=()
for _ in $(seq "$runs"); do
  for v in new old; do
    rm -f "$work/$v.qcow2"
    qemu-img create -q -f qcow2 "$work/$v.qcow2" 40G
    t=$(boot "$work/$v/base" "$work/$v.qcow2"); [ $v = new ] && first_new+=("$t") || first_old+=("$t")
    t=$(boot "$work/$v/base" "$work/$v.qcow2"); [ $v = new ] && used_new+=("$t") || used_old+=("$t")
  done
done
"$ks" delete -p vm >/dev/null

med() { printf '%s\n' "$@" | median ms 0; }
count() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
meds() { printf '%s\n' "$@" | median s 2; }
echo "machine: $(machine); runs: $runs (medians)"
echo "native k3s stop, $(count "${left_n[@]}") leftovers on the machine: kubestrap stop $(med "${stop_t[@]}") ms (removed $(count "${removed_n[@]}") things)   k3s-killall.sh's steps in shell: $(med "${base_t[@]}") ms"
echo "native k3s delete (stop, cleanup, machine-wide paths, files): $(med "${del_t[@]}") ms"
echo "VM first boot to ready (TCG): tmpfs root $(meds "${first_new[@]}") s   initramfs root ($before) $(meds "${first_old[@]}") s"
echo "VM boot of a used disk to ready (TCG): tmpfs root $(meds "${used_new[@]}") s   initramfs root ($before) $(meds "${used_old[@]}") s"
echo "base image: $(du -h "$(ls "$top"/target/vm/base-*.tar.zst)" | cut -f1) (was $(du -h "$(ls "$work"/old/out/base-*.tar.zst)" | cut -f1))"
