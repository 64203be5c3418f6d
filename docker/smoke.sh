#!/usr/bin/env bash
# The containers' smoke test, for real on this machine (root, Debian's buildah, podman,
# mmdebstrap and runc; the MedMNIST files in $GSCO_DATA_DIR):
#
#   bash docker/smoke.sh                 # registry and hub
#   bash docker/smoke.sh --generalist    # also the CPU generalist image (vLLM, SmolLM2):
#                                        # the hub container answers in gsco mode through it
#
# 1. builds the registry and hub images (docker/build-local.sh; cached layers reused);
# 2. runs the registry container (host network on loopback, read-only root, its store on
#    a named volume, the admin token a podman secret) and checks its health check;
# 3. from the host: enrols a site, trains a small specialist, signs and publishes it;
# 4. runs the hub container (read-only root, state volume, TUF root a secret, client
#    keys a read-only mount), waits until it has synced and verified the bundle, and
#    diagnoses an image through it with a client key;
# 5. publishes a second version and kills the registry (SIGKILL) right after the
#    acknowledgement; stops the hub; starts the registry container again and checks that
#    both acknowledged bundles are there and that `gsco audit registry` (event log, TUF
#    metadata, the site's egress ledger, the hub's access log) finds nothing wrong;
# 6. checks that both containers ran as uid 10001, removes containers, volumes, secrets.
#
# Writes a summary (times, image sizes) to $GSCO_SMOKE_OUT (default:
# /tmp/gsco-container-smoke.json). Exit 0 only when every check passed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
started=$SECONDS
step() { echo "smoke [$((SECONDS - started)) s]: $*"; }
die() {
  echo "smoke: FAILED: $*" >&2
  exit 1
}

# The project's environment (for gsco on the host) and the private image store.
source "$root/scripts/_env.sh"
ensure_main_env >/dev/null
cd "$root"
eval "$(bash "$here/build-local.sh" --env)"
data="${GSCO_DATA_DIR:-}"
[[ -f "$data/pneumoniamnist.npz" ]] || die "set GSCO_DATA_DIR to the folder with pneumoniamnist.npz"

with_generalist=false
case "${1:-}" in
  "") ;;
  --generalist) with_generalist=true ;;
  *) die "usage: smoke.sh [--generalist]" ;;
esac
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
images=(registry hub)
if $with_generalist; then images+=(generalist-cpu); fi
step "building the images: ${images[*]}"
build_start=$SECONDS
bash "$here/build-local.sh" "${images[@]}"
build_seconds=$((SECONDS - build_start))

work="$(mktemp -d /tmp/gsco-smoke.XXXXXX)"
tag="gsco-smoke-$$"
registry_ctr="$tag-registry"
hub_ctr="$tag-hub"
generalist_ctr="$tag-generalist"
cleanup() {
  podman rm --force --time 5 "$hub_ctr" "$registry_ctr" "$generalist_ctr" >/dev/null 2>&1 || true
  podman volume rm --force "$tag-registry" "$tag-hub" >/dev/null 2>&1 || true
  podman secret rm "$tag-admin-token" "$tag-root" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python -c 'from protocol import free_loopback_port; print(free_loopback_port())'; }
registry_port="$(free_port)"
hub_port="$(free_port)"
generalist_port="$(free_port)"
registry="127.0.0.1:$registry_port"
hub_url="http://127.0.0.1:$hub_port"

# Read-only root (secrets land on a tmpfs); no systemd here, so the image's health
# check runs when asked (podman healthcheck run), not on a timer.
hardened=(--read-only --tmpfs /run/secrets:mode=0755 --health-interval disable)

wait_healthy() {  # wait_healthy CONTAINER SECONDS: the image's own health check passes
  local deadline=$((SECONDS + $2))
  until podman healthcheck run "$1" >/dev/null 2>&1; do
    if [[ "$(podman inspect --format '{{.State.Running}}' "$1")" != true ]]; then
      podman logs "$1" >&2 || true
      die "$1 exited"
    fi
    ((SECONDS < deadline)) || {
      podman logs "$1" >&2 || true
      die "$1 not healthy after $2 s"
    }
    sleep 1
  done
}

start_registry() {
  podman run --detach --name "$registry_ctr" --network host "${hardened[@]}" \
    --volume "$tag-registry:/var/lib/gsco/registry" \
    --secret "$tag-admin-token,target=registry_admin_token,uid=10001,mode=0400" \
    --env "GSCO_REGISTRY=$registry" \
    "localhost/gsco-registry:$version" \
    registry serve --root /var/lib/gsco/registry --host 127.0.0.1 --port "$registry_port" \
    --admin-token-file /run/secrets/registry_admin_token >/dev/null
}

step "starting the registry container on $registry"
openssl rand -base64 32 | tr -d '\n' >"$work/admin.token"
chmod 600 "$work/admin.token"
podman secret create "$tag-admin-token" "$work/admin.token" >/dev/null
podman volume create "$tag-registry" >/dev/null
podman volume create "$tag-hub" >/dev/null
registry_start=$SECONDS
start_registry
wait_healthy "$registry_ctr" 60
registry_ready_seconds=$((SECONDS - registry_start))
podman exec "$registry_ctr" gsco registry trust-root --root /var/lib/gsco/registry >"$work/root.json"
podman secret create "$tag-root" "$work/root.json" >/dev/null

step "enrolling a site, training and publishing a specialist from the host"
export GSCO_SITE_HOME="$work/site"
gsco site init --site-id smoke-site >/dev/null
gsco registry enroll --site-id smoke-site --key "$work/site/keys/site.pub" \
  --registry "$registry" --admin-token-file "$work/admin.token"
train() {  # train VERSION
  gsco site train --task pneumonia-cxr --data "$data/pneumoniamnist.npz" \
    --backbone resnet18 --weights scratch --epochs 1 --max-train-images 256 \
    --max-eval-images 128 --threads 2 --version "$1" --sign --out "$work/bundle-v$1" >/dev/null
  gsco site publish "$work/bundle-v$1" --registry "$registry"
}
train 1

generalist=(--no-generalist)
mode=ensemble
if $with_generalist; then
  step "starting the CPU generalist container on 127.0.0.1:$generalist_port (vLLM: minutes)"
  podman run --detach --name "$generalist_ctr" --network host --tmpfs /tmp --shm-size 1g \
    --env GSCO_GENERALIST_HOST=127.0.0.1 --env "GSCO_GENERALIST_PORT=$generalist_port" \
    --health-interval disable "localhost/gsco-generalist-cpu:$version" >/dev/null
  generalist_start=$SECONDS
  wait_healthy "$generalist_ctr" 900
  generalist_ready_seconds=$((SECONDS - generalist_start))
  uid="$(podman exec "$generalist_ctr" id -u)"
  [[ "$uid" == 10001 ]] || die "the generalist runs as uid $uid"
  generalist=(--generalist-url "http://127.0.0.1:$generalist_port/v1")
  mode=gsco
fi

step "starting the hub container on $hub_url"
mkdir -p "$work/clients"
api_key="$(gsco hub add-client smoke-client --keys "$work/clients/api_keys.json" 2>/dev/null)"
chown -R 10001:10001 "$work/clients"
podman run --detach --name "$hub_ctr" --network host "${hardened[@]}" \
  --volume "$tag-hub:/var/lib/gsco/hub" \
  --volume "$work/clients:/etc/gsco/clients:ro" \
  --secret "$tag-root,target=registry_root,uid=10001,mode=0400" \
  --env "GSCO_HUB=$hub_url" \
  "localhost/gsco-hub:$version" \
  hub serve --registry "$registry" --trusted-root /run/secrets/registry_root \
  --state-dir /var/lib/gsco/hub --api-keys /etc/gsco/clients/api_keys.json \
  --host 127.0.0.1 --port "$hub_port" "${generalist[@]}" --sync-interval 1 >/dev/null
hub_start=$SECONDS
wait_healthy "$hub_ctr" 60
deadline=$((SECONDS + 120))
until podman exec "$hub_ctr" gsco hub health --ready >/dev/null 2>&1; do
  ((SECONDS < deadline)) || {
    podman logs "$hub_ctr" >&2
    die "the hub did not load the published specialist in 120 s"
  }
  sleep 1
done
hub_ready_seconds=$((SECONDS - hub_start))

step "diagnosing an image through the hub container"
python - "$data/pneumoniamnist.npz" "$work/image.png" <<'EOF'
import sys

import numpy as np
from PIL import Image

with np.load(sys.argv[1], allow_pickle=False) as data:
    Image.fromarray(data["test_images"][0]).save(sys.argv[2])
EOF
gsco diagnose "$work/image.png" --task pneumonia-cxr --hub "$hub_url" --api-key "$api_key" \
  --mode "$mode" --json >"$work/answer.json"
python - "$work/answer.json" "$mode" <<'EOF'
import json
import sys

answer = json.loads(open(sys.argv[1]).read().splitlines()[0])
assert answer["label"] in ("normal", "pneumonia"), answer
assert answer["specialists"], "no specialist answered"
assert answer["mode_used"] == sys.argv[2], (answer["mode_used"], answer["warnings"])
assert not answer["degraded"], answer["warnings"]
if sys.argv[2] == "gsco":
    assert answer["generalist"]["model"] == "smollm2-135m-instruct", answer["generalist"]
print(
    f"smoke: the hub answered {answer['label']} in {answer['mode_used']} mode from "
    f"{len(answer['specialists'])} specialist(s)"
)
EOF
if gsco diagnose "$work/image.png" --task pneumonia-cxr --hub "$hub_url" --api-key wrong \
  --json >/dev/null 2>&1; then
  die "the hub answered a request with a wrong API key"
fi

step "checking that both containers run as a non-root user"
for ctr in "$registry_ctr" "$hub_ctr"; do
  uid="$(podman exec "$ctr" id -u)"
  [[ "$uid" == 10001 ]] || die "$ctr runs as uid $uid"
  if podman exec "$ctr" touch /opt/gsco/written 2>/dev/null; then
    die "$ctr's root filesystem is writable"
  fi
done

step "publishing version 2, then killing the registry right after the acknowledgement"
train 2
podman kill --signal KILL "$registry_ctr" >/dev/null
podman stop --time 10 "$hub_ctr" >/dev/null
podman wait "$registry_ctr" >/dev/null || true

step "restarting the registry container: nothing acknowledged may be lost"
podman start "$registry_ctr" >/dev/null
wait_healthy "$registry_ctr" 60
gsco registry ls --registry "$registry" --site smoke-site | tee "$work/ls.txt"
for v in 1 2; do
  grep -Eq "smoke-site +[^ ]+ +$v +[0-9a-f]+ +active" "$work/ls.txt" || die "version $v is missing"
done
hub_volume="$(podman volume inspect --format '{{.Mountpoint}}' "$tag-hub")"
gsco audit registry --registry "$registry" --trusted-root "$work/root.json" \
  --ledger "$work/site" --access-log "$hub_volume" --out "$work/audit"
total_seconds=$((SECONDS - started))

size() { podman image inspect --format '{{.Size}}' "localhost/gsco-$1:$version"; }
generalist_json=""
if $with_generalist; then
  generalist_json=", \"generalist_healthy\": $generalist_ready_seconds"
  image_json=", \"generalist-cpu\": $(size generalist-cpu)"
fi
out="${GSCO_SMOKE_OUT:-/tmp/gsco-container-smoke.json}"
cat >"$out" <<EOF
{
  "passed": true,
  "seconds": {"total": $total_seconds, "build": $build_seconds,
              "registry_healthy": $registry_ready_seconds, "hub_ready": $hub_ready_seconds$generalist_json},
  "image_bytes": {"registry": $(size registry), "hub": $(size hub)${image_json:-}},
  "runtime": "$(podman info --format '{{.Host.OCIRuntime.Name}}')"
}
EOF
step "passed; summary in $out"
cat "$out"
