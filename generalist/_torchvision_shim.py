"""Lets torchvision import in the vLLM CPU environment, whose PyTorch is the CPU build.

PyPI's torchvision is built against PyTorch's CUDA build: with ``torch+cpu`` its
C ops (``_C.so``, linked to ``libtorch_cuda``) do not load, and its import then
fails on registering fake kernels for operators that were never defined
(``RuntimeError: operator torchvision::nms does not exist``). vLLM's InternVL
image processor (the MedDr path) imports torchvision for its transforms, which
are pure Python. So, where the C ops do not load, the two operators' schemas are
defined before torchvision is first imported: the import goes through and the
ops themselves stay unavailable (no served model calls them).

:class:`generalist.EmbeddedServer` copies this file into that environment's
site-packages with a ``.pth`` line importing it, so every interpreter there
(vLLM's model-inspection subprocess and its engine processes included) has it.
It imports nothing until torchvision is imported. Never imported by gsco itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: The operators torchvision registers fakes for without checking that its ops loaded.
_UNGUARDED = ("nms", "qnms")
#: Holds the definitions alive (a Library is dropped with its last reference).
_DEFINED: list[Any] = []


def _define_missing_ops() -> None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    # Typed loosely: this runs against the vLLM environment's PyTorch, not gsco's.
    torch: Any = importlib.import_module("torch")
    try:
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
        return  # a build that matches this PyTorch: torchvision is whole
    except (OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    for name in _UNGUARDED:
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _DEFINED.append(library)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`_define_missing_ops` once, as torchvision is first imported."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _define_missing_ops()
        return None  # the ordinary finders import it


sys.meta_path.insert(0, _BeforeTorchvision())
