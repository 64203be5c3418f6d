#!/usr/bin/env bash
# The main job: sets up everything it needs (once), then runs the end-to-end demo.
# Extra arguments go to 'gsco demo'.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
ensure_main_env
cd "$gsco_root"
exec gsco demo "$@"
