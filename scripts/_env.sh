# Sourced by scripts/test.sh and scripts/demo.sh: prepares (once) and activates the
# project's virtual environment.
#
# The environment lives outside the clone, under $GSCO_CACHE_DIR (default
# ~/.cache/gsco), keyed by the hash of pyproject.toml, the pinned constraints and
# the Python version, so a fresh clone with unchanged dependencies reuses it and a
# dependency change builds a new one. Only the project itself is (re)installed,
# in editable mode, on every run: a few seconds.

gsco_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GSCO_CACHE_DIR=${GSCO_CACHE_DIR:-$HOME/.cache/gsco}
export GSCO_CACHE_DIR

gsco_log() { printf '[gsco setup] %s\n' "$*" >&2; }

# gsco_heartbeat WHAT: a line every 30 s until killed (long set-up steps that print nothing).
gsco_heartbeat() {
  local started=$SECONDS
  while sleep 30; do gsco_log "still $1 ($((SECONDS - started)) s)"; done
}

gsco_python() {
  local candidate
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  gsco_log "Python 3.11 or newer is required"
  return 1
}

# ensure_main_env: the environment with every extra the tests and the demo need.
ensure_main_env() {
  local python key venv
  python=$(gsco_python)
  key=$( (cat "$gsco_root/pyproject.toml" "$gsco_root/requirements/constraints.txt"
          "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
  venv="$GSCO_CACHE_DIR/venvs/main-$key"
  mkdir -p "$GSCO_CACHE_DIR/venvs"
  (
    flock 9
    if [ ! -f "$venv/.gsco-ready" ]; then
      gsco_log "creating $venv (first run on this machine: PyTorch and the rest, a few minutes)"
      rm -rf "$venv"
      local log="$venv.install.log"
      gsco_heartbeat "installing into $venv" &
      local heartbeat=$!
      trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
      if ! { "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip "setuptools>=77" wheel &&
        "$venv/bin/python" -m pip install --disable-pip-version-check \
          -c "$gsco_root/requirements/constraints.txt" "$gsco_root[all,dev]"; } >"$log" 2>&1; then
        kill "$heartbeat" 2>/dev/null || true
        grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 40 >&2
        gsco_log "installing the environment failed (full log: $log)"
        exit 1
      fi
      kill "$heartbeat" 2>/dev/null || true
      touch "$venv/.gsco-ready"
      gsco_log "environment ready"
    fi
  ) 9>"$venv.lock"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e "$gsco_root" >"$venv.editable.log" 2>&1; then
    tail -n 20 "$venv.editable.log" >&2
    gsco_log "installing the project into $venv failed"
    return 1
  fi
  export VIRTUAL_ENV="$venv"
  export PATH="$venv/bin:$PATH"
  # Flower: no telemetry, never install app dependencies at run time.
  export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
  # The MedMNIST files shipped beside the checkout, unless the user points elsewhere.
  if [ -z "${GSCO_DATA_DIR:-}" ] && [ -d "$gsco_root/../shared/datasets/medmnist" ]; then
    GSCO_DATA_DIR=$(cd "$gsco_root/../shared/datasets/medmnist" && pwd)
    export GSCO_DATA_DIR
  fi
}

# ensure_system_packages PKG...: Debian packages some tests run for real (the container
# tools for the long tests). Installed with apt-get when missing and running as root;
# otherwise one clear line says what to install, and the tests that need them fail.
ensure_system_packages() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    gsco_log "missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})"
    return 0
  fi
  gsco_log "installing Debian packages: ${missing[*]}"
  local log="$GSCO_CACHE_DIR/apt-install.log"
  mkdir -p "$GSCO_CACHE_DIR"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    gsco_log "installing ${missing[*]} failed (full log: $log)"
    return 1
  fi
}
