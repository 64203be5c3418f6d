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
    "MEDDR_CHAT_TEMPLATE",
    "MEDDR_HF_OVERRIDES",
    "MEDDR_TEMPLATE_FILE",
    "VLLM_MIN_VERSION",
    "meddr_backend_config",
    "meddr_serve_command",
    "write_meddr_recipe",
]

#: The oldest vLLM the recipe works with: structured_outputs (guided_choice is ignored
#: silently from 0.12 on). The ``gpu`` extra pins the same floor.
VLLM_MIN_VERSION = "0.12"
#: The chat template's file name in a recipe folder (see :func:`write_meddr_recipe`).
MEDDR_TEMPLATE_FILE = "meddr-chatml.jinja"
#: InternVL-Chat-V1-2's config lacks the dynamic-patch fields vLLM's InternVL loader reads.
MEDDR_HF_OVERRIDES = {
    "architectures": ["InternVLChatModel"],
    "dynamic_image_size": False,
    "use_thumbnail": False,
    "max_dynamic_patch": 1,
    "min_dynamic_patch": 1,
}
#: Hermes-2 (ChatML) template, which InternVL-Chat-V1-2 was tuned with.
MEDDR_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image_url' %}<image>\n{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def meddr_serve_command(
    model_path: str,
    gpus: int,
    port: int = 8000,
    template_path: str = MEDDR_TEMPLATE_FILE,
    max_lora_rank: int = 16,
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
        "--max-model-len",
        "4096",
        "--limit-mm-per-prompt",
        json.dumps({"image": 1}),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--host",
        "0.0.0.0",  # noqa: S104  (a GPU server in its own container, behind the hub)
        "--port",
        str(port),
    ]


def meddr_backend_config(base_url: str) -> OpenAIConfig:
    """How the hub talks to a MedDr server: it sees the image; 40B answers take a while."""
    return OpenAIConfig(
        base_url=base_url, model="meddr", sees_images=True, timeout_s=120.0, max_concurrency=32
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
    config = meddr_backend_config(f"http://127.0.0.1:{port}/v1")
    settings = out_dir / "hub-generalist.json"
    settings.write_text(
        json.dumps(
            {
                "base_url": config.base_url,
                "model": config.model,
                "sees_images": config.sees_images,
                "timeout_s": config.timeout_s,
                "max_concurrency": config.max_concurrency,
            },
            indent=2,
        )
        + "\n"
    )
    return [template, script, settings]
