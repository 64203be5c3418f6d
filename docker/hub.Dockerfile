# syntax=docker/dockerfile:1
# The hub's diagnosis API: syncs and verifies signed bundles through TUF, runs the
# specialists (onnxruntime) and retrieval (faiss), asks the generalist (vLLM).
#
# Build context: the repository root. Elsewhere: docker build -f docker/hub.Dockerfile .
# Here (no daemon, no registry access): bash docker/build-local.sh hub
#
# HUB_EXTRAS chooses the runtimes, never both: "hub" (CPU: onnxruntime, faiss-cpu) or
# "hub-core,gpu" (onnxruntime-gpu, faiss-gpu; give a CUDA base image as BASE_IMAGE).
# Mount: /var/lib/gsco/hub (TUF cache, verified adapters, the hash-chained access
# log: keep it on a volume), the registry's TUF root (--trusted-root), the client key
# file (--api-keys) and TLS certificate and key as secrets.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG HUB_EXTRAS=hub
WORKDIR /src
COPY . .
# Every version pinned by the constraints file. Behind a TLS-inspecting proxy, pass
# its CA bundle as the build secret build_ca.
RUN --mount=type=secret,id=build_ca \
    case "${HUB_EXTRAS}" in \
        hub|hub-core,gpu) ;; \
        *) echo "HUB_EXTRAS must be hub (CPU) or hub-core,gpu" >&2; exit 2 ;; \
    esac \
    && if [ -f /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && python3 -m venv /opt/gsco \
    && /opt/gsco/bin/pip install --no-cache-dir --disable-pip-version-check \
        --constraint requirements/constraints.txt ".[${HUB_EXTRAS}]"

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gsco-hub" \
      org.opencontainers.image.description="GSCo Network hub: the diagnosis API (specialists, retrieval, generalist arbitration)" \
      org.opencontainers.image.source="https://github.com/gsco-network/gsco" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GSCo Network"
RUN useradd --uid 10001 --user-group --home-dir /var/lib/gsco --shell /usr/sbin/nologin gsco \
    && mkdir -p /var/lib/gsco/hub \
    && chown -R gsco:gsco /var/lib/gsco \
    && mkdir -p /run/secrets
COPY --from=build /opt/gsco /opt/gsco
ENV PATH=/opt/gsco/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gsco \
    GSCO_CACHE_DIR=/var/lib/gsco/hub/cache \
    GSCO_HUB=http://127.0.0.1:8080
USER 10001:10001
WORKDIR /var/lib/gsco
VOLUME ["/var/lib/gsco/hub"]
EXPOSE 8080
# Liveness (/healthz); with TLS, the compose file asks https with --ca.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["gsco", "hub", "health", "--timeout", "5"]
ENTRYPOINT ["gsco"]
CMD ["hub", "serve", "--state-dir", "/var/lib/gsco/hub", "--trusted-root", "/run/secrets/registry_root.json", "--api-keys", "/run/secrets/hub_api_keys", "--host", "127.0.0.1", "--port", "8080"]
