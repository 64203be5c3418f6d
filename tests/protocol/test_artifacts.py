"""The model.onnx and index.npz contracts."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from protocol import ArtifactError, check_onnx, load_index


def _model(
    *,
    domain: str = "",
    inputs: tuple[str, ...] = ("image",),
    external: bool = False,
    ir_version: int = 8,
) -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32).tolist())
    if external:
        weight.data_location = TensorProto.EXTERNAL
        weight.ClearField("float_data")
        entry = weight.external_data.add()
        entry.key, entry.value = "location", "../../etc/passwd"
    nodes = [
        helper.make_node("Flatten", ["image"], ["embedding"], axis=1),
        helper.make_node("MatMul", ["embedding", "w"], ["logits"], domain=domain),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4, 1, 1]) for name in inputs],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4]),
        ],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version).SerializeToString()


def test_a_good_model() -> None:
    summary = check_onnx(_model())
    assert (summary.num_classes, summary.embedding_dim) == (3, 4)
    assert summary.input_shape == ("N", 4, 1, 1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (b"not a model at all", "not an ONNX model"),
        (_model(external=True), "external data"),
        (_model(domain="com.evil"), "non-standard operator domains"),
        (_model(inputs=("image", "mask")), "one input 'image'"),
        (_model(ir_version=11), "IR version 11"),
    ],
)
def test_models_breaking_the_contract(model: bytes, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        check_onnx(model)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_index_loads_without_pickle() -> None:
    good = {
        "embeddings": np.zeros((2, 4), np.float32),
        "labels": np.zeros(2, np.int64),
        "group_sizes": np.full(2, 10, np.int64),
    }
    assert set(load_index(_npz(**good))) == set(good)
    with pytest.raises(ArtifactError, match="exactly"):
        load_index(_npz(**good, patient_ids=np.arange(2)))
    with pytest.raises(ArtifactError):
        load_index(_npz(**{**good, "labels": np.array([{"x": 1}, None], dtype=object)}))
    with pytest.raises(ArtifactError, match="not a readable npz"):
        load_index(b"garbage")


def test_onnx_module_is_importable() -> None:
    assert onnx.__version__
