# syntax=docker/dockerfile:1
# The consortium's Flower SuperLink (gsco federation serve): TLS, SuperNode
# authentication, persistent state; runs never install dependencies at the sites.
# It runs the GSCo ServerApp, which needs the site extra (the FedAvg model's code; it
# includes the registry client): the same environment as the site image, one layer.
#
# Build context: the repository root. Elsewhere: docker build -f docker/federation.Dockerfile .
# Here (no daemon, no registry access): bash docker/build-local.sh federation (several GB)
#
# Mount: /var/lib/gsco/federation (the consortium folder from 'gsco federation init':
# the CA, the SuperLink's certificate and key, members and the SuperLink's database;
# keep it on a volume, the key readable only by uid 10001).
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
LABEL org.opencontainers.image.title="gsco-federation" \
      org.opencontainers.image.description="GSCo Network consortium SuperLink (Flower deployment engine)" \
      org.opencontainers.image.source="https://github.com/gsco-network/gsco" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GSCo Network"
RUN /opt/gsco/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --uid 10001 --user-group --home-dir /var/lib/gsco --shell /usr/sbin/nologin gsco \
    && mkdir -p /var/lib/gsco/federation \
    && chown -R gsco:gsco /var/lib/gsco \
    && mkdir -p /run/secrets
ENV PATH=/opt/gsco/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gsco \
    GSCO_FEDERATION_ROOT=/var/lib/gsco/federation \
    GSCO_CACHE_DIR=/var/lib/gsco/federation/cache \
    XDG_CACHE_HOME=/var/lib/gsco/federation/cache \
    FLWR_TELEMETRY_ENABLED=0
USER 10001:10001
WORKDIR /var/lib/gsco
VOLUME ["/var/lib/gsco/federation"]
# Fleet, Control and Runtime APIs on one HTTPS port (gsco federation init --port).
EXPOSE 9092
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["gsco", "federation", "health", "--address", "127.0.0.1:9099"]
ENTRYPOINT ["gsco"]
CMD ["federation", "serve", "--bind", "0.0.0.0", "--health-address", "127.0.0.1:9099"]
