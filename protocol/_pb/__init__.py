"""Generated protobuf and gRPC code (scripts/gen-proto.sh); do not edit."""
