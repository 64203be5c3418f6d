"""The production generalist: MedDr_0401 (InternVL-Chat-V1-2 + LoRA, 40B) on vLLM across GPUs.

This cannot run here (no GPU, no weights): the command and the client
configuration are kept as tested code so that they stay right.
"""

from __future__ import annotations

import json

from generalist._backend import OpenAIConfig

__all__ = [
    "MEDDR_CHAT_TEMPLATE",
    "MEDDR_HF_OVERRIDES",
    "meddr_backend_config",
    "meddr_serve_command",
]

#: Pinned: structured_outputs needs vLLM >= 0.12 (guided_choice is ignored silently there).
VLLM_VERSION = "0.12.0"
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
    template_path: str = "meddr-chatml.jinja",
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
