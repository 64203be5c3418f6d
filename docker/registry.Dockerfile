# syntax=docker/dockerfile:1
# The consortium registry: enrolled site keys, verification on publish, content-addressed
# blobs in SQLite, TUF metadata and the hash-chained event log (gRPC).
#
# Build context: the repository root. Elsewhere: docker build -f docker/registry.Dockerfile .
# Here (no daemon, no registry access): bash docker/build-local.sh registry
#
# Mount: /var/lib/gsco/registry (the store; keep it on a volume), the admin token as a
# secret (--admin-token-file /run/secrets/registry_admin_token), and for TLS the
# certificate and key (--tls-cert, --tls-key: serving beyond loopback requires them).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
WORKDIR /src
COPY pyproject.toml requirements/constraints.txt docker/requirements-of.py ./
# The dependencies alone, every version pinned by the constraints file: this layer is
# rebuilt only when they change, not when the code does. Behind a TLS-inspecting proxy,
# pass its CA bundle as the build secret build_ca (it never enters a layer).
RUN --mount=type=secret,id=build_ca \
    if [ -f /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && python3 requirements-of.py pyproject.toml registry > requirements.txt \
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
LABEL org.opencontainers.image.title="gsco-registry" \
      org.opencontainers.image.description="GSCo Network registry of signed specialist bundles (gRPC, TUF)" \
      org.opencontainers.image.source="https://github.com/gsco-network/gsco" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GSCo Network"
RUN /opt/gsco/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --uid 10001 --user-group --home-dir /var/lib/gsco --shell /usr/sbin/nologin gsco \
    && mkdir -p /var/lib/gsco/registry \
    && chown -R gsco:gsco /var/lib/gsco \
    && mkdir -p /run/secrets
ENV PATH=/opt/gsco/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gsco \
    GSCO_REGISTRY=127.0.0.1:50051
USER 10001:10001
WORKDIR /var/lib/gsco
VOLUME ["/var/lib/gsco/registry"]
EXPOSE 50051
# The standard gRPC health service; with TLS, the compose file adds --tls-ca.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["gsco", "registry", "health", "--timeout", "5"]
ENTRYPOINT ["gsco"]
CMD ["registry", "serve", "--root", "/var/lib/gsco/registry", "--host", "127.0.0.1", "--port", "50051"]
