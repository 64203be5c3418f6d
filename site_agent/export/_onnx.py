"""ONNX export of a trained specialist, checked structurally and numerically."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from protocol import (
    ArtifactError,
    OnnxSummary,
    Preprocessing,
    calibrated_softmax,
    check_onnx,
    preprocess,
)
from site_agent._compat import quiet_legacy_onnx_export
from site_agent.errors import ExportError, ParityError
from site_agent.train._zoo import SpecialistNet

__all__ = ["OPSET", "PARITY_ATOL", "ExportReport", "export_onnx"]

OPSET = 17
#: Parity gate. onnxruntime passes outright when it is within PARITY_ATOL of
#: PyTorch (float32). Otherwise both are compared with a float64 PyTorch run
#: on the same images, and onnxruntime must be no further from it than
#: max(PARITY_ATOL, PARITY_FACTOR x PyTorch float32's own error, PARITY_RTOL x
#: the largest reference output). Float32 rounding in long dot products grows
#: with the sum of |w x|, and onnxruntime's kernels accumulate in another order
#: than PyTorch's: after one epoch of lite0 onnxruntime was 3.0e-3 from float64
#: where PyTorch was 3.4e-4 (9x), with BatchNorm folding off as well as on.
#: That is arithmetic, not a wrong export; a wrong op or weight is off by a
#: sizeable fraction of the output itself.
PARITY_ATOL = 1e-4
PARITY_FACTOR = 20.0
PARITY_RTOL = 1e-4


@dataclass(frozen=True)
class ExportReport:
    """The result of :func:`export_onnx`."""

    path: Path
    summary: OnnxSummary
    parity_images: int
    max_abs_diff_logits: float
    max_abs_diff_embedding: float
    providers: tuple[str, ...]
    max_abs_diff_probabilities: float = 0.0  # calibrated softmax, what clinicians see
    float64_errors: dict[str, float] | None = None  # set when the float64 check ran

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict for ``metrics.json``."""
        return {
            "opset": OPSET,
            "parity_images": self.parity_images,
            "max_abs_diff_logits": self.max_abs_diff_logits,
            "max_abs_diff_embedding": self.max_abs_diff_embedding,
            "max_abs_diff_probabilities": self.max_abs_diff_probabilities,
            "max_abs_diff_below_1e-4": max(self.max_abs_diff_logits, self.max_abs_diff_embedding)
            < PARITY_ATOL,
            "float64_reference": self.float64_errors,
            "onnxruntime_providers": list(self.providers),
        }


def _pin_output_dims(path: Path, net: SpecialistNet) -> bytes:
    """Writes the known class and embedding sizes into the outputs' shapes.

    The TorchScript exporter leaves them symbolic for some architectures (ViTs);
    ``onnx.checker`` (full check, with shape inference) then confirms them.
    """
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    sizes = {"logits": int(net.classifier.out_features), "embedding": net.embedding_dim}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name in sizes and len(dims) == 2:
            dims[1].Clear()
            dims[1].dim_value = sizes[output.name]
    data: bytes = model.SerializeToString()
    path.write_bytes(data)
    return data


def export_onnx(
    net: SpecialistNet,
    preprocessing: Preprocessing,
    path: Path,
    parity_images: NDArray[np.uint8],
    temperature: float = 1.0,
) -> ExportReport:
    """Exports ``net`` to ``path`` and checks it.

    The model takes ``image`` float32 ``[N, C, H, W]`` (already preprocessed,
    any batch size) and returns ``logits`` and ``embedding``. It is checked with
    :func:`protocol.check_onnx` and run in onnxruntime on ``parity_images`` (real
    images), whose outputs must match PyTorch's within :data:`PARITY_TOLERANCE`.

    Raises:
        ExportError: export failed or the model breaks the bundle contract.
        ParityError: onnxruntime disagrees with PyTorch.
    """
    import onnxruntime as ort

    net.eval()
    channels, (height, width) = preprocessing.channels, preprocessing.input_size
    example = torch.zeros(2, channels, height, width)
    dynamic = {"image": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}}
    try:
        with quiet_legacy_onnx_export():
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=False,  # the TorchScript exporter: no onnxscript, exports every zoo model
                input_names=["image"],
                output_names=["logits", "embedding"],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    data = _pin_output_dims(path, net)
    try:
        summary = check_onnx(data)
    except ArtifactError as exc:
        raise ExportError(f"the exported model breaks the bundle contract: {exc}") from exc
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    inputs = preprocess(parity_images, preprocessing)
    onnx_logits, onnx_embedding = session.run(["logits", "embedding"], {"image": inputs})
    with torch.inference_mode():
        torch_logits, torch_embedding = net(torch.from_numpy(inputs))
    diff_logits = float(np.abs(onnx_logits - torch_logits.numpy()).max())
    diff_embedding = float(np.abs(onnx_embedding - torch_embedding.numpy()).max())
    float64_errors = None
    if max(diff_logits, diff_embedding) > PARITY_ATOL:
        float64_errors = _against_float64(
            net,
            inputs,
            {"logits": onnx_logits, "embedding": onnx_embedding},
            {"logits": torch_logits.numpy(), "embedding": torch_embedding.numpy()},
        )
    return ExportReport(
        path,
        summary,
        len(inputs),
        diff_logits,
        diff_embedding,
        tuple(session.get_providers()),
        float(
            np.abs(
                calibrated_softmax(onnx_logits, temperature)
                - calibrated_softmax(torch_logits.numpy(), temperature)
            ).max()
        ),
        float64_errors,
    )


def _against_float64(
    net: SpecialistNet,
    inputs: NDArray[np.float32],
    onnx_out: dict[str, NDArray[np.float32]],
    torch_out: dict[str, NDArray[np.float32]],
) -> dict[str, float]:
    """Errors of onnxruntime and PyTorch float32 against a float64 PyTorch run."""
    reference_net = copy.deepcopy(net).double().eval()
    with torch.inference_mode():
        logits, embedding = reference_net(torch.from_numpy(inputs).double())
    reference = {"logits": logits.numpy(), "embedding": embedding.numpy()}
    errors: dict[str, float] = {}
    for name in ("logits", "embedding"):
        ort_error = float(np.abs(onnx_out[name] - reference[name]).max())
        torch_error = float(np.abs(torch_out[name] - reference[name]).max())
        errors[f"{name}_onnxruntime"], errors[f"{name}_pytorch_float32"] = ort_error, torch_error
        scale = float(np.abs(reference[name]).max())
        errors[f"{name}_reference_max_abs"] = scale
        if ort_error > max(PARITY_ATOL, PARITY_FACTOR * torch_error, PARITY_RTOL * scale):
            raise ParityError(
                f"onnxruntime {name} are {ort_error:.2e} from the float64 reference, PyTorch "
                f"float32 only {torch_error:.2e}, largest output {scale:.2e} "
                f"(on {len(inputs)} images): the export is wrong"
            )
    return errors
