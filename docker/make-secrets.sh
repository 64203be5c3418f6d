#!/usr/bin/env bash
# Makes what docker/compose.yaml mounts as secrets, in docker/secrets/ (or $1):
# a private CA (ca.pem), TLS certificates and keys for the registry and the hub
# signed by it, and the registry's admin token. Never overwrites an existing file.
# The registry's TUF root (registry_root.json) comes from the running registry
# (docker/README.md). Extra names or addresses the services are reached by:
#   GSCO_REGISTRY_NAMES="registry.example.org" GSCO_HUB_NAMES="hub.example.org 10.0.0.5"
# Bring your own certificates instead by putting them at the same paths.
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
days="${GSCO_CERT_DAYS:-825}"
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
umask 077

if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -days "$days" -subj "/CN=GSCo Network consortium CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.pem 2>/dev/null
  chmod 644 ca.pem
  echo "make-secrets: $out/ca.pem (keep ca.key offline)"
fi

issue() {  # issue NAME "SAN entries"
  local name="$1" names="$2" san="" entry
  [[ -f "$name.pem" ]] && return 0
  for entry in $names; do
    if [[ "$entry" =~ ^[0-9.]+$ || "$entry" == *:* ]]; then san+="IP:$entry,"; else san+="DNS:$entry,"; fi
  done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days "$days" -sha256 -out "$name.pem" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "${san%,}") \
    2>/dev/null
  rm -f "$name.csr"
  chmod 644 "$name.pem"
  echo "make-secrets: $out/$name.pem ($san)"
}
issue registry "registry localhost 127.0.0.1 ${GSCO_REGISTRY_NAMES:-}"
issue hub "hub hub-gpu localhost 127.0.0.1 ${GSCO_HUB_NAMES:-}"

if [[ ! -f registry_admin_token ]]; then
  openssl rand -base64 32 | tr -d '\n' >registry_admin_token
  echo "make-secrets: $out/registry_admin_token"
fi
# The services run as uid 10001; compose mounts these files as they are.
if [[ "$(id -u)" == 0 ]]; then
  chown 10001:10001 registry.key hub.key registry_admin_token
else
  echo "make-secrets: the containers run as uid 10001: give it the keys and the token" \
    "(sudo chown 10001 $out/registry.key $out/hub.key $out/registry_admin_token)" >&2
fi
