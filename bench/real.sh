#!/usr/bin/env bash
# Real Kubernetes (the development localkube: upstream v1.20.2 built from
# Debian's source package by ci/localkube/build.sh), in one run on this
# machine:
#   - `kubestrap start` (artifacts in the cache) to the node Ready, and to a
#     first pod Running (the pause image every node has, so no image load
#     is timed), on the native and docker drivers;
#   - the baseline: the same components with the same command lines (taken
#     from the running cluster), started one after the other by a plain
#     shell script that waits for each as localkube's supervisor does (etcd
#     /health, containerd's socket, the apiserver's /readyz, the node's pod
#     CIDR → the CNI file), from fresh etcd and containerd state: kubestrap's
#     overhead (verify, unpack, PKI, driver, supervisor) as a ratio;
#   - the resident memory of every component with one pod running;
#   - the artifact's build time, cached (inputs unchanged) and, with
#     REAL_BENCH_COLD=1, cold (an empty build cache: source download, code
#     generators, the whole Go build).
# Usage: bench/real.sh [RUNS]   (root; a Docker engine for the docker rows)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${1:-3}
cd "$top"
kubectl=$(ls /usr/lib/google-cloud-sdk/bin/kubectl.1.2* | head -1)
k() { "$kubectl" "$@"; }

echo "machine: $(machine), $(free -g | awk '/Mem:/ {print $2}') GiB"
if [ "${REAL_BENCH_COLD:-0}" = 1 ]; then
  t=$(now); KUBESTRAP_BUILD_CACHE=$work/cold ci/localkube/build.sh "$work/lk-cold" >/dev/null 2>&1; t=$(( $(now) - t ))
  echo "build, cold (empty cache): $(echo $t | median s 0) s"
fi
t=$(now); lk=$(ci/localkube/build.sh "$top/target/localkube" 2>/dev/null); t=$(( $(now) - t ))
echo "build, cached (inputs unchanged): $(echo $t | median s 1) s"
ci/docker/build.sh "$top/target/docker" >/dev/null
manifest=$(KUBESTRAP_DEV_BIN=$top/target/release KUBESTRAP_LOCALKUBE=$lk KUBESTRAP_DOCKER_ARTIFACTS=$top/target/docker \
  ci/dev-manifest.sh "$work/artifacts" v0 auto release 2>/dev/null)
"$ks" trust add ci/dev-keys/dev.pub >/dev/null 2>&1
"$ks" fetch --manifest "$manifest" --driver native >/dev/null
"$ks" fetch --manifest "$manifest" --driver docker >/dev/null

pod_yaml=$work/pod.yaml
cat > "$pod_yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: first}
spec:
  containers: [{name: pause, image: localhost/localkube/pause:3.4, imagePullPolicy: Never}]
EOF
wait_pod() {
  local until=$(( $(date +%s) + 180 ))
  until [ "$(k get pod first -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]; do
    [ "$(date +%s)" -lt "$until" ] || { echo "the pod was not Running within 180s" >&2; return 1; }
    sleep 0.1
  done
}
wait_node() {
  local until=$(( $(date +%s) + 180 ))
  until k get nodes -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; do
    [ "$(date +%s)" -lt "$until" ] || { echo "the node was not Ready within 180s" >&2; return 1; }
    sleep 0.1
  done
}
# The components' memory (KiB, proportional set size: the binary the
# components share counted once) for a run directory's processes, and the
# pods' (their processes under the profile's shims).
components_pss() {
  local marker="KUBESTRAP_RUN_DIR=$1" sum=0 pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    if { tr '\0' '\n' < /proc/$pid/environ; } 2>/dev/null | grep -qxF "$marker"; then
      sum=$(( sum + $( { awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup; } 2>/dev/null || echo 0) ))
    fi
  done
  echo "$sum"
}

declare -A ready pod
for driver in native docker; do
  if [ "$driver" = docker ] && ! docker version >/dev/null 2>&1; then echo "docker: no engine, skipped"; continue; fi
  prof=bench-$driver
  for i in $(seq "$runs"); do
    t=$(now)
    "$ks" start -p "$prof" --manifest "$manifest" --driver "$driver" --port "$(free_port)" >/dev/null
    r=$(( $(now) - t ))
    k apply -f "$pod_yaml" >/dev/null
    wait_pod
    p=$(( $(now) - t ))
    ready[$driver]+="$r "; pod[$driver]+="$p "
    if [ "$driver" = native ] && [ "$i" = "$runs" ]; then
      run_dir=$KUBESTRAP_HOME/profiles/$prof/run
      echo "native: memory of every component (PSS, one pod): $(( $(components_pss "$(readlink -f "$run_dir")") / 1024 )) MiB"
      # The command lines for the baseline, in start order.
      : > "$work/cmdlines"
      for c in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy dns; do
        for pid in $(ls /proc | grep -E '^[0-9]+$'); do
          line=$(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null || true)
          case $line in
            */bin/localkube\ $c\ *|*/bin/$c\ *) echo "$c $line" >> "$work/cmdlines"; break ;;
          esac
        done
      done
      data=$KUBESTRAP_HOME/profiles/$prof/data
      node_ip=$(k get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
      comp_path=$(awk '$1 == "kube-apiserver" {print $2}' "$work/cmdlines" | xargs dirname)
    fi
    if [ "$driver" = docker ] && [ "$i" = "$runs" ]; then
      c=$(docker ps --filter "label=dev.kubestrap.profile=$prof" --format '{{.Names}}' | head -1)
      echo "docker: resident memory of the container (one pod): $(docker stats --no-stream --format '{{.MemUsage}}' "$c" | cut -d/ -f1)"
    fi
    if [ "$driver" = native ] && [ "$i" = "$runs" ]; then
      "$ks" stop -p "$prof" >/dev/null   # its certificates and configuration serve the baseline
    else
      "$ks" delete -p "$prof" >/dev/null
    fi
  done
done

# The baseline: the same command lines by a plain script, fresh state.
baseline() {
  local b=$work/base
  rm -rf "$b"; mkdir -p "$b"
  cp -a "$data/pki" "$data/localkube" "$b/"
  rm -f "$b/localkube/cni/net.d/"* ; rm -rf "$b/localkube/cni/ipam" "$b/localkube/logs"
  mkdir -p "$b/localkube/logs" /run/localkube
  ip link add kbench0 type bridge; ip addr add "$node_ip/32" dev kbench0; ip link set kbench0 up
  local t=$(now) c line pids=() until
  export PATH=$comp_path:$PATH
  while read -r c line; do
    line=${line//$data/$b}
    # shellcheck disable=SC2086
    setsid $line > "$b/localkube/logs/$c.log" 2>&1 &
    pids+=($!)
    case $c in
      etcd) until=$(( $(date +%s) + 60 )); until curl -sf --cacert "$b/pki/etcd-ca.crt" --cert "$b/localkube/tls/etcd-client.crt" --key "$b/localkube/tls/etcd-client.key" https://127.0.0.1:2379/health >/dev/null; do [ "$(date +%s)" -lt "$until" ] || return 1; sleep 0.05; done ;;
      containerd)
        until [ -S /run/localkube/containerd/containerd.sock ]; do sleep 0.05; done
        "$comp_path/ctr" --address /run/localkube/containerd/containerd.sock -n k8s.io images import --snapshotter overlayfs "$comp_path/../images/pause.tar" >/dev/null ;;
      kube-apiserver) until=$(( $(date +%s) + 120 )); until curl -sf --cacert "$b/pki/ca.crt" --cert "$b/localkube/tls/localkube.crt" --key "$b/localkube/tls/localkube.key" "https://$node_ip:$(echo "$line" | sed -n 's/.*--secure-port=\([0-9]*\).*/\1/p')/readyz" >/dev/null; do [ "$(date +%s)" -lt "$until" ] || return 1; sleep 0.05; done ;;
    esac
  done < "$work/cmdlines"
  local kc=$b/localkube/conf/localkube.kubeconfig cidr="" until=$(( $(date +%s) + 120 ))
  until [ -n "$cidr" ]; do
    [ "$(date +%s)" -lt "$until" ] || { echo "baseline: no pod CIDR within 120s (logs: $b/localkube/logs)" >&2; return 1; }
    cidr=$(KUBECONFIG=$kc k get node -o jsonpath='{.items[0].spec.podCIDR}' 2>/dev/null || true); sleep 0.05
  done
  sed "s|\"subnet\": \"[^\"]*\"|\"subnet\": \"$cidr\"|; s|$data|$b|g" "$work/conflist" > "$b/localkube/cni/net.d/10-localkube.conflist"
  KUBECONFIG=$kc wait_node
  local r=$(( $(now) - t ))
  KUBECONFIG=$kc k apply -f "$pod_yaml" >/dev/null
  KUBECONFIG=$kc wait_pod
  local p=$(( $(now) - t ))
  ready[baseline]+="$r "; pod[baseline]+="$p "
  # Down in reverse order, and the machine cleaned as kubestrap's stop would.
  local i
  for (( i = ${#pids[@]} - 1; i >= 0; i-- )); do
    kill "${pids[$i]}" 2>/dev/null || true
    timeout 20 tail --pid="${pids[$i]}" -f /dev/null || kill -9 "${pids[$i]}" 2>/dev/null || true
  done
  local s
  for s in $(pgrep -f /run/localkube/containerd || true); do pkill -9 -P "$s" || true; kill -9 "$s" 2>/dev/null || true; done
  sleep 1
  for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^(/run/localkube|/var/lib/kubelet|/run/netns/cni-|$b)" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  ip link del kbench0 2>/dev/null || true; ip link del cni0 2>/dev/null || true
  rm -rf /run/localkube "$b"
  iptables-save | grep -E '^:(KUBE-|CNI-)' | cut -d' ' -f1 | tr -d : > "$work/chains" || true
}
if [ -n "${data:-}" ]; then
  # The CNI file the native run wrote: the template of the baseline's.
  cp "$data/localkube/cni/net.d/10-localkube.conflist" "$work/conflist"
  for i in $(seq "$runs"); do baseline; done
  "$ks" delete -p bench-native >/dev/null
fi

echo
echo "| | node Ready (median of $runs) | first pod Running | vs baseline |"
echo "|---|---|---|---|"
for row in baseline native docker; do
  [ -n "${ready[$row]:-}" ] || continue
  r=$(echo "${ready[$row]}" | tr ' ' '\n' | grep . | median s 1)
  p=$(echo "${pod[$row]}" | tr ' ' '\n' | grep . | median s 1)
  if [ "$row" = baseline ]; then ratio=1.00; else
    ratio=$(awk -v a="$p" -v b="$(echo "${pod[baseline]:-}" | tr ' ' '\n' | grep . | median s 3)" 'BEGIN {if (b > 0) printf "%.2fx", a/b; else print "-"}'); fi
  echo "| $row | $r s | $p s | $ratio |"
done
