"""Workarounds for Flower's runtime, in one place.

Each names the version it was written against; ``tests/test_compat.py`` fails
when one stops working or stops being needed.
"""

from __future__ import annotations

__all__ = ["FLOWER_QUIET_ENV"]

#: Environment of the SuperLink and everything it starts (flwr 1.41, Ray 2.55):
FLOWER_QUIET_ENV = {
    # Ray warns at every worker start that it will stop overriding CUDA_VISIBLE_DEVICES
    # for num_gpus=0 tasks; this opts in to that future behaviour (nothing here uses GPUs).
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    # The ClientApps run torch, timm and transformers, whose FutureWarnings flood the
    # Flower log that the report keeps (transformers 5.24: `is_gradient_checkpointing` at
    # every adapter trainer built); errors and Flower's own messages still show.
    "PYTHONWARNINGS": "ignore::FutureWarning",
}
