"""Generalist backends, the GSCo prompts and answer parsing, and the embedded CPU server.

The generalist is GSCo's decision-maker: in production MedDr served by vLLM
on GPUs; here, the same vLLM OpenAI server on the CPU with SmolLM2-135M.
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
    MEDDR_TEMPLATE_FILE,
    VLLM_MIN_VERSION,
    meddr_backend_config,
    meddr_serve_command,
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
from generalist.errors import (
    AdapterLoadError,
    GeneralistError,
    GeneralistResponseError,
    GeneralistUnavailableError,
    ServeError,
)

__all__ = [
    "MAX_LORA_RANK",
    "MEDDR_TEMPLATE_FILE",
    "MODEL_NAME",
    "PROMPTS",
    "PROMPT_TEMPLATE_VERSION",
    "SYSTEM",
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
    "average_scores",
    "content_free",
    "cpu_dtype",
    "label_scores",
    "meddr_backend_config",
    "meddr_serve_command",
    "parse_answer",
    "render_prompt",
    "write_meddr_recipe",
]
