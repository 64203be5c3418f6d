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

FROM ${BASE_IMAGE} AS deps
ARG HUB_EXTRAS=hub
RUN case "${HUB_EXTRAS}" in \
        hub|hub-core,gpu) ;; \
        *) echo "HUB_EXTRAS must be hub (CPU) or hub-core,gpu" >&2; exit 2 ;; \
    esac
WORKDIR /src
COPY pyproject.toml requirements/constraints.txt docker/requirements-of.py ./
# The dependencies alone, every version pinned by the constraints file: this layer is
# rebuilt only when they change, not when the code does. Behind a TLS-inspecting proxy,
# pass its CA bundle as the build secret build_ca (it never enters a layer).
RUN --mount=type=secret,id=build_ca \
    if [ -f /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && python3 requirements-of.py pyproject.toml "${HUB_EXTRAS}" > requirements.txt \
    && python3 -m venv /opt/gsco \
    && /opt/gsco/bin/pip install --no-cache-dir --disable-pip-version-check \
        --constraint constraints.txt --requirement requirements.txt

FROM deps AS wheel
COPY . .
RUN --mount=type=secret,id=build_ca \
    if [ -f /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && /opt/gsco/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps \
        --wheel-dir /dist .

FROM ${BASE_IMAGE}
# The dependencies first: images that install the same extras share this layer.
COPY --from=deps /opt/gsco /opt/gsco
COPY --from=wheel /dist /tmp/dist
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gsco-hub" \
      org.opencontainers.image.description="GSCo Network hub: the diagnosis API (specialists, retrieval, generalist arbitration)" \
      org.opencontainers.image.source="https://github.com/gsco-network/gsco" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GSCo Network"
RUN /opt/gsco/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --uid 10001 --user-group --home-dir /var/lib/gsco --shell /usr/sbin/nologin gsco \
    && mkdir -p /var/lib/gsco/hub \
    && chown -R gsco:gsco /var/lib/gsco \
    && mkdir -p /run/secrets
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
CMD ["hub", "serve", "--state-dir", "/var/lib/gsco/hub", "--trusted-root", "/run/secrets/registry_root", "--api-keys", "/etc/gsco/clients/api_keys.json", "--host", "127.0.0.1", "--port", "8080"]
