# syntax=docker/dockerfile:1
# The site agent: trains, calibrates, exports and signs a hospital's specialist next to
# its archive, publishes it to the registry, and runs the site's Flower SuperNode
# (gsco site join: outbound connections only).
#
# Build context: the repository root. Elsewhere: docker build -f docker/site.Dockerfile .
# Here (no daemon, no registry access): bash docker/build-local.sh site (PyTorch: several GB)
#
# Mount: /var/lib/gsco/site (the site home: its signing and SuperNode keys, made on
# first use with mode 0600, and the egress ledger: keep it on a volume), the data
# read-only (for example at /data), and the consortium's CA certificates as secrets.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
WORKDIR /src
COPY pyproject.toml requirements/constraints.txt docker/requirements-of.py ./
# The dependencies alone, every version pinned by the constraints file: this layer is
# rebuilt only when they change, not when the code does. Behind a TLS-inspecting proxy,
# pass its CA bundle as the build secret build_ca (it never enters a layer).
RUN --mount=type=secret,id=build_ca \
    if [ -f /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && python3 requirements-of.py pyproject.toml site > requirements.txt \
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
LABEL org.opencontainers.image.title="gsco-site" \
      org.opencontainers.image.description="GSCo Network site agent and Flower SuperNode (a hospital's specialists)" \
      org.opencontainers.image.source="https://github.com/gsco-network/gsco" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GSCo Network"
RUN /opt/gsco/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --uid 10001 --user-group --home-dir /var/lib/gsco --shell /usr/sbin/nologin gsco \
    && mkdir -p /var/lib/gsco/site \
    && chown -R gsco:gsco /var/lib/gsco \
    && mkdir -p /run/secrets
ENV PATH=/opt/gsco/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gsco \
    GSCO_SITE_HOME=/var/lib/gsco/site \
    GSCO_CACHE_DIR=/var/lib/gsco/site/cache \
    XDG_CACHE_HOME=/var/lib/gsco/site/cache \
    FLWR_HOME=/var/lib/gsco/site/flwr \
    FLWR_TELEMETRY_ENABLED=0
USER 10001:10001
WORKDIR /var/lib/gsco
VOLUME ["/var/lib/gsco/site"]
# The SuperNode's gRPC health service (gsco site join --health-address 127.0.0.1:9099).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["gsco", "federation", "health", "--address", "127.0.0.1:9099"]
ENTRYPOINT ["gsco"]
# One-off jobs replace this: docker run ... gsco-site site train --data /data/... ;
# the long-running service is 'site join' with the consortium's addresses.
CMD ["site", "doctor"]
