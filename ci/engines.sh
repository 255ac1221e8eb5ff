#!/usr/bin/env bash
# Brings up the container engines the docker driver is tested against,
# beside the machine's rootful Docker: rootful Podman (its Docker-compatible
# socket), and, for a non-root user made here, rootless Podman and rootless
# Docker (dockerd-rootless.sh under rootlesskit). Each is started only if it
# does not answer yet, and waited for (bounded). Prints the variables the
# tests read (eval "$(ci/engines.sh)"); `ci/engines.sh stop` ends what it
# started. As root; the packages come from ci/prereqs.sh.
#
# The machine, not kubestrap, is set up here, as a desktop has it: the user
# with subordinate ids (useradd gives them), its runtime directory, and
# /dev/net/tun and /dev/fuse usable by users (0666, as udev makes them; this
# machine kind ships them 0600), which rootless networking (slirp4netns) and
# fuse-overlayfs need.
set -euo pipefail
user=kubestrap-rootless
state=/run/kubestrap-engines
mkdir -p "$state"
# The engines outlive this script: they must not keep the caller's working
# directory (conmon fails with "Failed to get working directory" once a
# checkout they were started in is removed).
cd /

log() { printf '==> %s\n' "$*" >&2; }

# answers SOCKET [USER]: an engine answers on SOCKET (as USER).
answers() {
  local sock=$1 as=${2:-}
  if [ -n "$as" ]; then
    timeout 10 runuser -u "$as" -- env DOCKER_HOST="unix://$sock" docker version --format '{{.Server.Version}}' >/dev/null 2>&1
  else
    timeout 10 env DOCKER_HOST="unix://$sock" docker version --format '{{.Server.Version}}' >/dev/null 2>&1
  fi
}

# wait_for NAME SOCKET [USER]: up to 60 s.
wait_for() {
  local name=$1 sock=$2 as=${3:-} i
  for i in $(seq 120); do
    answers "$sock" "$as" && return 0
    sleep 0.5
  done
  log "$name did not answer on $sock within 60 s; its log: $state/$name.log"
  tail -n 20 "$state/$name.log" >&2 || :
  return 1
}

if [ "${1:-}" = stop ]; then
  for f in "$state"/*.pid; do
    [ -f "$f" ] || continue
    kill -TERM -- "-$(cat "$f")" 2>/dev/null || kill -TERM "$(cat "$f")" 2>/dev/null || :
    rm -f "$f"
  done
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "ci/engines.sh sets up engines and a user: run it as root" >&2; exit 1; }

# Rootful Podman.
podman_sock=/run/podman/podman.sock
if ! answers "$podman_sock"; then
  log "starting rootful Podman's API service on $podman_sock"
  mkdir -p /run/podman
  setsid podman system service --time=0 "unix://$podman_sock" >"$state/podman.log" 2>&1 &
  echo $! >"$state/podman.pid"
  wait_for podman "$podman_sock"
fi

# The non-root user and what rootless engines need of the machine.
if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
  # Rootless Podman on fuse-overlayfs (vfs, its fallback where the home is
  # itself on an overlay filesystem, copies every image in full).
  home=$(getent passwd "$user" | cut -d: -f6)
  install -d -o "$user" -g "$(id -g "$user")" "$home/.config" "$home/.config/containers"
  printf '[storage]\ndriver = "overlay"\n[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n' \
    > "$home/.config/containers/storage.conf"
  chown "$user:" "$home/.config/containers/storage.conf"
fi
grep -q "^$user:" /etc/subuid || usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$user"
uid=$(id -u "$user")
gid=$(id -g "$user")
run=/run/user/$uid
install -d -m 0700 -o "$user" -g "$gid" "$run"
for dev in /dev/net/tun /dev/fuse; do [ -e "$dev" ] && chmod 0666 "$dev"; done
as_user() { runuser -u "$user" -- env XDG_RUNTIME_DIR="$run" HOME="$(getent passwd "$user" | cut -d: -f6)" PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# Rootless Podman.
rl_podman=$run/podman/podman.sock
if ! answers "$rl_podman" "$user"; then
  log "starting rootless Podman's API service for $user on $rl_podman"
  # A rootless network namespace a failed start left half made is made again.
  as_user sh -c 'rm -rf "$XDG_RUNTIME_DIR/libpod/tmp/rootless-netns"; mkdir -p "$XDG_RUNTIME_DIR/podman"' || :
  as_user setsid podman system service --time=0 "unix://$rl_podman" >"$state/podman-rootless.log" 2>&1 &
  echo $! >"$state/podman-rootless.pid"
  wait_for podman-rootless "$rl_podman" "$user"
fi

# Rootless Docker.
rl_docker=$run/docker.sock
if ! answers "$rl_docker" "$user"; then
  log "starting rootless Docker for $user on $rl_docker"
  rootless=$(command -v dockerd-rootless.sh || echo /usr/share/docker.io/contrib/dockerd-rootless.sh)
  as_user setsid sh "$rootless" --storage-driver=fuse-overlayfs --host "unix://$rl_docker" \
    >"$state/docker-rootless.log" 2>&1 &
  echo $! >"$state/docker-rootless.pid"
  wait_for docker-rootless "$rl_docker" "$user"
fi

cat <<EOF
export KUBESTRAP_TEST_PODMAN=unix://$podman_sock
export KUBESTRAP_TEST_ROOTLESS_USER=$user
export KUBESTRAP_TEST_ROOTLESS_PODMAN=unix://$rl_podman
export KUBESTRAP_TEST_ROOTLESS_DOCKER=unix://$rl_docker
EOF
