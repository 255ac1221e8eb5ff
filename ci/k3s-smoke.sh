#!/usr/bin/env bash
# The first real run of k3s under kubestrap, unattended, on every driver,
# for a machine with internet:
#
#   ci/k3s-smoke.sh [--drivers native,docker,qemu] [--out DIR] [--keep-going]
#
# It generates and verifies (`manifest generate --verify --images`) manifests
# for every release pinned in manifests/channel/pins.toml, with the
# project's own VM and rootfs artifacts (built here), signs them with a key
# made for the run, and then on each driver:
#
#   start (the oldest release) → CoreDNS Ready → a pod resolves
#   kubernetes.default and reads /version → `image load` of an image built
#   here and a pod from it (imagePullPolicy: Never) → stop → start (a
#   ConfigMap made before the stop is still there) → a second node (docker
#   and qemu: `node add`; it has the loaded image and flannel on the node's
#   own interface; qemu: stop --shutdown → start with it) → upgrade through
#   every newer release, one minor at a time, with both nodes → delete →
#   anything left on the machine (processes, mounts, links, iptables chains,
#   engine objects, files outside the home)
#
# and prints one table (step × driver). Everything goes to DIR (default
# target/k3s-smoke/<UTC time>/): table.txt, one log per driver and step,
# leftovers-<driver>.txt. Exit 0 when every cell passed.
#
#   ci/k3s-smoke.sh --standin [...]
#
# runs the same sequence against the test stand-in in k3s mode (no
# network): it does for real what k3s does to the kernel and the host (see
# ci/standin/src/k3s), and reports it in the ConfigMap kube-system/standin-k3s,
# which takes the place of CoreDNS and the pods. The test suite runs this.
# Needs: root for the native driver, a Docker engine for docker; the rest
# is built here (cargo, ci/vm/build.sh, ci/docker/build.sh). Options:
# --driver-artifacts DIR (repeat; take the VM and rootfs artifacts from DIR),
# --profile debug|release, --no-build (use target/<profile>/ as it is).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
drivers=native,docker,qemu
standin=false
out=
keep_going=false
profile=release
build=true
artifacts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --drivers) drivers=$2; shift ;;
    --standin) standin=true ;;
    --out) out=$2; shift ;;
    --keep-going) keep_going=true ;;
    --profile) profile=$2; shift ;;
    --no-build) build=false ;;
    --driver-artifacts) artifacts+=("$2"); shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "ci/k3s-smoke.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
out=${out:-$top/target/k3s-smoke/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
cleanup() {
  for h in "$work"/home-*; do
    [ -d "$h" ] && KUBESTRAP_HOME=$h "$ks" delete --all >/dev/null 2>&1
  done
  rm -rf "$work"
}
trap cleanup EXIT
export KUBESTRAP_HOME=$work/home KUBECONFIG=$work/kubeconfig NO_COLOR=1
unset KUBESTRAP_MANIFEST KUBESTRAP_CHANNEL_URL
die() { echo "ci/k3s-smoke.sh: $*" >&2; exit 1; }

# The whole workspace, as ci/test.sh builds it (the same features).
flags=(--quiet --workspace --bins)
[ "$profile" = release ] && flags+=(--release)
if $build; then (cd "$top" && cargo build "${flags[@]}") || die "cargo build failed"; fi
ks=$top/target/$profile/kubestrap
kubectl=$(ls /usr/lib/google-cloud-sdk/bin/kubectl.1.3* 2>/dev/null | sort -V | tail -1)
kubectl=${kubectl:-$(command -v kubectl)}
[ -n "$kubectl" ] || die "no kubectl on this machine"

# The driver artifacts the asked drivers need: built here unless given.
wants=()
[[ ,$drivers, == *,qemu,* ]] && wants+=(hypervisor base)
[[ ,$drivers, == *,docker,* ]] && wants+=(rootfs)
# A real release pins them all, whichever drivers this run tries.
$standin || wants=(hypervisor base rootfs)
if [ ${#artifacts[@]} -eq 0 ] && [ ${#wants[@]} -gt 0 ]; then
  if [[ " ${wants[*]} " == *" base "* ]]; then "$top/ci/vm/build.sh" "$work/built" >/dev/null || die "ci/vm/build.sh failed"; fi
  if [[ " ${wants[*]} " == *" rootfs "* ]]; then "$top/ci/docker/build.sh" "$work/built" >/dev/null || die "ci/docker/build.sh failed"; fi
  artifacts=("$work/built")
fi
mkdir -p "$work/artifacts"
for d in "${artifacts[@]}"; do cp "$d"/{hypervisor,base,rootfs}-*.tar.zst "$work/artifacts/" 2>/dev/null; done
for want in "${wants[@]}"; do
  ls "$work/artifacts/$want-"*.tar.zst >/dev/null 2>&1 || die "no $want-*.tar.zst among the driver artifacts"
done

# A signing key of this run's own, trusted only in this run's homes (one
# per driver: an upgrade in one must not make the older release a rollback
# for the next).
"$ks" manifest keygen --out "$work/key" --name smoke --unencrypted >/dev/null || die "keygen failed"
sign() { "$ks" manifest sign --key "$work/key/smoke.key" "$1" >/dev/null || die "signing $1 failed"; }

# Every pinned release (kubernetes:k3s:kubectl), oldest first.
mapfile -t rel < <(awk -F'"' '/^kubernetes = /{k=$2} /^k3s = /{s=$2} /^kubectl = /{print k ":" s ":" $2}' \
  "$top/manifests/channel/pins.toml" | sort -t: -k1,1V)
[ ${#rel[@]} -ge 2 ] || die "manifests/channel/pins.toml pins fewer than two releases"
if $standin; then
  # Each pinned release's stand-in as k3s (its k3s mode), which does what
  # that release does where releases differ (ci/standin/src/k3s).
  for r in "${rel[@]}"; do
    IFS=: read -r v k3s _ <<<"$r"
    s=$work/standin-$v
    mkdir -p "$s"
    cp "$top/target/$profile/localkube-standin" "$s/k3s"
    echo "$k3s" > "$s/version.txt"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$s" -cf - k3s version.txt \
      | zstd -q -1 -f -o "$work/k3s-$v.tar.zst"
  done
  driver_components=()
  for f in "$work"/artifacts/*-linux-*.tar.zst; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .tar.zst)
    case $name in
      hypervisor-*) driver_components+=(--component "hypervisor@test=$f#bin/qemu-system-x86_64" --drivers hypervisor=qemu) ;;
      base-*) driver_components+=(--component "base-image@test=$f#vmlinuz" --drivers base-image=qemu) ;;
      rootfs-*) driver_components+=(--component "rootfs@test=$f" --drivers rootfs=docker) ;;
    esac
  done
  n=1
  for r in "${rel[@]}"; do
    IFS=: read -r v k3s _ <<<"$r"
    "$ks" manifest new --out "$work/release-$n.toml" --channel smoke --manifest-version "$n" --kubernetes "$v" \
      --component "kubectl@$v=$kubectl" --component "localkube@${k3s#v}=$work/k3s-$v.tar.zst#k3s" \
      --drivers localkube=native,docker,qemu "${driver_components[@]}" \
      --run "$top/manifests/channel/k3s-run.toml" >/dev/null || die "manifest new failed"
    n=$((n + 1))
  done
else
  # Every pinned release, verified from upstream.
  n=1
  for r in "${rel[@]}"; do
    IFS=: read -r k8s k3s kc <<<"$r"
    "$ks" manifest generate --kubernetes "$k8s" --k3s "$k3s" --kubectl "$kc" --images --verify \
      --target "linux-$(uname -m)" --pins "$top/manifests/channel/pins.toml" \
      --driver-artifacts "$work/artifacts" --driver-artifacts-url "file://$work/artifacts/" \
      --channel smoke --manifest-version "$n" --out "$work/release-$n.toml" >"$out/generate-$n.log" 2>&1 \
      || die "manifest generate for $k8s failed (see $out/generate-$n.log)"
    n=$((n + 1))
  done
fi
last=${#rel[@]}
for n in $(seq "$last"); do sign "$work/release-$n.toml"; done
k8s_of() { sed -n 's/^kubernetes = "\(.*\)"$/\1/p' "$work/release-$1.toml"; }

# An image of this run's own (busybox-static), as `docker save` writes one.
image_archive() {
  local d=$work/image
  mkdir -p "$d/rootfs/bin"
  cp "$(command -v busybox || echo /bin/busybox)" "$d/rootfs/bin/busybox" 2>/dev/null || return 1
  ln -sf busybox "$d/rootfs/bin/sh"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$d/rootfs" -cf "$d/layer.tar" . || return 1
  local diff config
  diff=$(sha256sum "$d/layer.tar" | cut -c1-64)
  mkdir -p "$d/archive/$diff"
  mv "$d/layer.tar" "$d/archive/$diff/layer.tar"
  printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff" > "$d/config.json"
  config=$(sha256sum "$d/config.json" | cut -c1-64)
  mv "$d/config.json" "$d/archive/$config.json"
  printf '[{"Config":"%s.json","RepoTags":["kubestrap.local/smoke:1"],"Layers":["%s/layer.tar"]}]' "$config" "$diff" \
    > "$d/archive/manifest.json"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$d/archive" -cf "$work/smoke-image.tar" .
}
image_archive || die "cannot build the test image (busybox-static is needed)"

steps=(start ready pod image-load restart-kept nodes upgrade delete leftovers)
declare -A cell
kc() { "$ks" kubectl -p "$p" -- "$@"; }
report() { kc get configmap -n kube-system standin-k3s -o 'jsonpath={.data}' 2>&1; }
# The standin's report: every named step ok.
report_ok() {
  local r s; r=$(report)
  echo "$r"
  for s in "$@"; do echo "$r" | grep -q "\"$s\":\"ok: " || return 1; done
}

step_start() { "$ks" start -p "$p" --driver "$d" --manifest "$work/release-1.toml"; }
step_ready() {
  # Natively, / is shared or not as the machine has it (the report says which).
  local mounts=(mounts); [ "$d" = native ] && mounts=()
  if $standin; then report_ok config datastore cgroup modules flannel "${mounts[@]}"; else
    kc -n kube-system wait --for=condition=Ready pod -l k8s-app=kube-dns --timeout=300s
  fi
}
step_pod() {
  # The stand-in's pod runs once an image is there (the restart below).
  if $standin; then kc get --raw /version; else
    kc delete pod smoke-dns --ignore-not-found --wait=true >/dev/null
    kc run smoke-dns --restart=Never --image=docker.io/rancher/mirrored-library-busybox:1.36.1 \
      --image-pull-policy=Never -- sh -c 'nslookup kubernetes.default &&
        wget -qO- --no-check-certificate --header "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" https://kubernetes.default/version' &&
    kc wait --for=jsonpath='{.status.phase}'=Succeeded pod/smoke-dns --timeout=180s && kc logs smoke-dns
  fi
}
step_image_load() { "$ks" image load -p "$p" "$work/smoke-image.tar"; }
step_restart_kept() {
  kc create configmap smoke-kept --from-literal=k=v || return 1
  # A VM's guest sees placed images at boot: power it off, not suspend.
  local how=(); [ "$d" = qemu ] && how=(--shutdown)
  "$ks" stop -p "$p" "${how[@]}" && "$ks" start -p "$p" --manifest "$work/release-1.toml" || return 1
  [ "$(kc get configmap smoke-kept -o 'jsonpath={.data.k}')" = v ] || { echo "the ConfigMap is gone"; return 1; }
  if $standin; then report_ok sandbox "pod network"; else
    kc run smoke-image --restart=Never --image=kubestrap.local/smoke:1 --image-pull-policy=Never -- /bin/busybox echo smoke-ok &&
    kc wait --for=jsonpath='{.status.phase}'=Succeeded pod/smoke-image --timeout=180s && kc logs smoke-image | grep smoke-ok
  fi
}
# A second node: it has every image archive the server has (its own
# containerd imports only its own), and flannel on the node's own interface.
step_nodes() {
  local agent=kubestrap-$p-m02 files found
  "$ks" node add -p "$p" || return 1
  if [ "$d" = qemu ]; then
    # The nodes of a powered-off cluster come back with it.
    "$ks" stop -p "$p" --shutdown && "$ks" start -p "$p" --manifest "$work/release-1.toml" || return 1
  fi
  kc wait --for=condition=Ready "node/$agent" --timeout=180s || return 1
  files=$("$ks" image list -p "$p" -o json | grep -o '"file":"[^"]*"' | cut -d'"' -f4)
  [ -n "$files" ] || { echo "image list names no archive"; return 1; }
  if $standin; then
    found=$(kc get node "$agent" -o 'jsonpath={.metadata.annotations}')
    echo "$found"
    echo "$found" | grep -q '"standin.kubestrap.dev/flannel":"ok: ' || { echo "flannel is not on the node's interface"; return 1; }
    for f in $files; do
      echo "$found" | grep -q "standin.kubestrap.dev/images\":\"[^\"]*$f" || { echo "node $agent lacks $f"; return 1; }
    done
  else
    # A web server on the server's node, behind a Service; from a pod on
    # the agent (nothing pulled): its pod IP across nodes (flannel's
    # VXLAN), and the Service by name (cluster DNS, kube-proxy).
    local server=kubestrap-$p ip
    kc delete pod smoke-web smoke-agent --ignore-not-found --wait=true >/dev/null
    kc delete service smoke-web --ignore-not-found >/dev/null
    kc run smoke-web --image=kubestrap.local/smoke:1 --image-pull-policy=Never --port=8080 \
      --overrides="{\"spec\":{\"nodeName\":\"$server\"}}" -- /bin/busybox httpd -f -p 8080 -h /bin &&
    kc expose pod smoke-web --port=80 --target-port=8080 &&
    kc wait --for=condition=Ready pod/smoke-web --timeout=180s || return 1
    ip=$(kc get pod smoke-web -o 'jsonpath={.status.podIP}')
    # busybox's own resolver (nslookup; its static wget has none) and
    # `timeout` (its wget -T crashes).
    local b=/bin/busybox
    local script="$b timeout 10 $b wget -q -O /dev/null http://$ip:8080/busybox || exit 1
      svc=\$($b nslookup smoke-web.default.svc.cluster.local | $b awk '/^Address/ {a = \$NF} END {print a}')
      $b timeout 10 $b wget -q -O /dev/null http://\$svc/busybox && echo smoke-ok"
    kc run smoke-agent --restart=Never --image=kubestrap.local/smoke:1 --image-pull-policy=Never \
      --overrides="{\"spec\":{\"nodeName\":\"$agent\"}}" -- /bin/sh -c "$script" &&
    kc wait --for=jsonpath='{.status.phase}'=Succeeded pod/smoke-agent --timeout=180s && kc logs smoke-agent | grep smoke-ok
  fi
}
# Through every newer release, one minor at a time.
step_upgrade() {
  local n k8s
  for n in $(seq 2 "$last"); do
    k8s=$(k8s_of "$n")
    echo "== upgrade to $k8s"
    "$ks" upgrade -p "$p" --manifest "$work/release-$n.toml" || return 1
    kc get --raw /version | grep -q "\"gitVersion\": *\"v$k8s" || { echo "not $k8s after the upgrade"; return 1; }
  done
}
step_delete() { "$ks" delete -p "$p"; }
step_leftovers() {
  local f=$out/leftovers-$d.txt s path dir pid state mnt
  {
    # A process of the run: one carrying a cluster's marker, a pod of a
    # native k3s (in the machine's own kubepods cgroup, not one inside a
    # container), or a native k3s's shim (its address under /run/k3s, in this
    # mount namespace). Not a zombie: that is gone, only its exit status
    # waits for a reaper.
    mnt=$(readlink /proc/self/ns/mnt)
    for dir in /proc/[0-9]*; do
      pid=${dir#/proc/}
      { [ "$pid" = $$ ] || [ "$pid" = "$BASHPID" ]; } && continue
      state=$(awk '{print $3}' "$dir/stat" 2>/dev/null) || continue
      [ "$state" = Z ] && continue
      if tr '\0' '\n' < "$dir/environ" 2>/dev/null | grep -q "^KUBESTRAP_RUN_DIR=$work/" ||
        grep -q ':/kubepods' "$dir/cgroup" 2>/dev/null ||
        { [ "$(readlink "$dir/ns/mnt" 2>/dev/null)" = "$mnt" ] &&
          tr '\0' ' ' < "$dir/cmdline" 2>/dev/null | grep -q '/run/k3s/'; }; then
        echo "process $pid $(cat "$dir/comm" 2>/dev/null)"
      fi
    done
    awk '$5 ~ "^/run/k3s|^/var/lib/kubelet|^/run/netns/cni-" {print "mount " $5}' /proc/self/mountinfo
    ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^(cni0|flannel|kubestrap-)/ || / master cni0 / {print "link " $2}'
    for s in iptables-nft-save iptables-legacy-save ip6tables-nft-save ip6tables-legacy-save; do
      command -v "$s" >/dev/null && "$s" 2>/dev/null | awk -v s="$s" '/^:(KUBE-|CNI-|FLANNEL|KUBESTRAP-)/ {print s " chain " substr($1, 2)}'
    done
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
      docker ps -a --filter "label=dev.kubestrap.profile=$p" --format 'container {{.Names}}'
      docker volume ls --format '{{.Name}}' | awk -v p="kubestrap-$p-" 'index($1, p) == 1 {print "volume " $1}'
      docker network ls --format '{{.Name}}' | awk -v p="kubestrap-$p-" 'index($1, p) == 1 {print "network " $1}'
    fi
    for path in /run/k3s /var/lib/cni /run/flannel /var/lib/kubelet /var/lib/rancher/k3s /etc/rancher/node; do
      [ -e "$path" ] && ! grep -qx "$path" "$work/existed" && echo "path $path"
    done
  } > "$f"
  cat "$f"
  [ ! -s "$f" ]
}

# What existed before the run is not the run's.
for path in /run/k3s /var/lib/cni /run/flannel /var/lib/kubelet /var/lib/rancher/k3s /etc/rancher/node; do
  [ -e "$path" ] && echo "$path"
done > "$work/existed"

failed=0
IFS=, read -ra ds <<<"$drivers"
for d in "${ds[@]}"; do
  p=smoke-$d
  export KUBESTRAP_HOME=$work/home-$d
  "$ks" trust add "$work/key/smoke.pub" >/dev/null 2>&1
  unavailable=
  case $d in
    native) [ "$(id -u)" = 0 ] || unavailable="needs root" ;;
    docker) docker info >/dev/null 2>&1 || unavailable="no Docker engine answers" ;;
    qemu) ;;
    *) die "unknown driver $d" ;;
  esac
  broken=false
  for s in "${steps[@]}"; do
    if [ -n "$unavailable" ]; then cell[$d.$s]="skipped ($unavailable)"; continue; fi
    if $broken && [ "$s" != delete ] && [ "$s" != leftovers ]; then cell[$d.$s]="not run"; continue; fi
    if [ "$s" = nodes ] && [ "$d" = native ]; then cell[$d.$s]="- (one node)"; continue; fi
    t0=$(date +%s%N)
    "step_${s//-/_}" > "$out/$d-$s.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if [ $rc -eq 0 ]; then cell[$d.$s]="ok ${ms}ms"; else
      cell[$d.$s]="FAILED (exit $rc, ${ms}ms)"
      failed=1
      $keep_going || broken=true
    fi
  done
done

{
  printf '%-14s' step
  for d in "${ds[@]}"; do printf ' | %-30s' "$d"; done
  printf '\n'
  for s in "${steps[@]}"; do
    printf '%-14s' "$s"
    for d in "${ds[@]}"; do printf ' | %-30s' "${cell[$d.$s]}"; done
    printf '\n'
  done
  echo
  if $standin; then echo "localkube: the stand-in in k3s mode (ci/standin)"; else
    echo "releases: $(for n in $(seq "$last"); do k8s_of "$n"; done | paste -sd' ' | sed 's/ / -> /g')"
  fi
  echo "logs: $out"
} | tee "$out/table.txt"
exit $failed
