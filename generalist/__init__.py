"""Generalist backends, the GSCo prompts and answer parsing, and the embedded CPU server.

The generalist is GSCo's decision-maker: in production MedDr served by vLLM
on GPUs; here, the same vLLM OpenAI server on the CPU with SmolLM2-135M, or a
tiny random-weight model of MedDr's architecture served with MedDr's recipe.
"""

from generalist._backend import (
    ArbitrationRequest,
    ArbitrationResult,
    GeneralistBackend,
    OpenAICompatibleBackend,
    OpenAIConfig,
    label_scores,
)
from generalist._calibration import (
    CalibrationCache,
    CalibrationMethod,
    LabelCalibration,
    content_free,
)
from generalist._meddr import (
    HERMES_2_SYSTEM,
    MEDDR_CHAT_TEMPLATE,
    MEDDR_HF_OVERRIDES,
    MEDDR_TEMPLATE_FILE,
    VLLM_MIN_VERSION,
    meddr_backend_config,
    meddr_serve_command,
    read_hub_settings,
    write_hub_settings,
    write_meddr_recipe,
)
from generalist._orders import ReversedOrderAveraging, average_scores
from generalist._parse import ParsedAnswer, parse_answer
from generalist._prompts import (
    PROMPT_TEMPLATE_VERSION,
    PROMPTS,
    SYSTEM,
    MoedEvidence,
    RadEvidence,
    render_prompt,
)
from generalist._serve import MAX_LORA_RANK, MODEL_NAME, EmbeddedServer, ServerState, cpu_dtype
from generalist._tiny_meddr import (
    IMAGE_TOKENS,
    INTERNVL_SOURCE,
    TinyMeddr,
    image_token_count,
    make_tiny_meddr,
)
from generalist._tiny_server import TINY_MEDDR, TinyMeddrServer
from generalist.errors import (
    AdapterLoadError,
    GeneralistError,
    GeneralistResponseError,
    GeneralistUnavailableError,
    ServeError,
)

__all__ = [
    "HERMES_2_SYSTEM",
    "IMAGE_TOKENS",
    "INTERNVL_SOURCE",
    "MAX_LORA_RANK",
    "MEDDR_CHAT_TEMPLATE",
    "MEDDR_HF_OVERRIDES",
    "MEDDR_TEMPLATE_FILE",
    "MODEL_NAME",
    "PROMPTS",
    "PROMPT_TEMPLATE_VERSION",
    "SYSTEM",
    "TINY_MEDDR",
    "VLLM_MIN_VERSION",
    "AdapterLoadError",
    "ArbitrationRequest",
    "ArbitrationResult",
    "CalibrationCache",
    "CalibrationMethod",
    "EmbeddedServer",
    "GeneralistBackend",
    "GeneralistError",
    "GeneralistResponseError",
    "GeneralistUnavailableError",
    "LabelCalibration",
    "MoedEvidence",
    "OpenAICompatibleBackend",
    "OpenAIConfig",
    "ParsedAnswer",
    "RadEvidence",
    "ReversedOrderAveraging",
    "ServeError",
    "ServerState",
    "TinyMeddr",
    "TinyMeddrServer",
    "average_scores",
    "content_free",
    "cpu_dtype",
    "image_token_count",
    "label_scores",
    "make_tiny_meddr",
    "meddr_backend_config",
    "meddr_serve_command",
    "parse_answer",
    "read_hub_settings",
    "render_prompt",
    "write_hub_settings",
    "write_meddr_recipe",
]
