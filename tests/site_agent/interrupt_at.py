"""Runs ``gsco ARGS...`` and interrupts it (SIGINT to itself) at one stage of training.

``python interrupt_at.py STAGE ARGS...``: the stage's function is wrapped so that
the real signal arrives just before it runs ("before") or just after it
returns ("after"), wherever the timing of the machine would have put a Ctrl-C.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

#: stage: (module, attribute, when)
STAGES = {
    "search": ("site_agent.train._loop", "TrainingRun.fit", "before"),
    "epochs": ("site_agent.train._loop", "save_file", "after"),  # a checkpoint is kept
    "calibration": ("site_agent.train._loop", "fit_temperature", "before"),
    "export": ("site_agent.pipeline", "export_onnx", "before"),
    "index": ("site_agent.pipeline", "build_index", "before"),
    "signing": ("signing", "sign_bundle", "before"),
}


def main() -> None:
    stage = sys.argv[1]
    module_name, attribute, when = STAGES[stage]
    module = importlib.import_module(module_name)
    owner, _, name = attribute.rpartition(".")
    holder = getattr(module, owner) if owner else module
    original = getattr(holder, name)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if when == "before":
            os.kill(os.getpid(), signal.SIGINT)
        result = original(*args, **kwargs)
        if when == "after":
            os.kill(os.getpid(), signal.SIGINT)
        return result

    setattr(holder, name, interrupted)
    # As at a terminal (a suite started in the background inherits SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["gsco", *sys.argv[2:]]
    from gsco.cli import main as gsco

    gsco()


if __name__ == "__main__":
    main()
