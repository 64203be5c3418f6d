#!/usr/bin/env bash
# Regenerates protocol/_pb from protocol/proto/*.proto (run inside the dev environment).
# Usage: scripts/gen-proto.sh [OUT_DIR]   (default: protocol/_pb)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-protocol/_pb}
mkdir -p "$out"
"${PYTHON:-python}" -m grpc_tools.protoc -I protocol/proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protocol/proto/registry.proto
# grpc_tools writes a top-level import; make it a package import.
sed -i 's/^import registry_pb2 as registry__pb2$/from protocol._pb import registry_pb2 as registry__pb2/' \
  "$out/registry_pb2_grpc.py"
printf '"""Generated protobuf and gRPC code (scripts/gen-proto.sh); do not edit."""\n' > "$out/__init__.py"
