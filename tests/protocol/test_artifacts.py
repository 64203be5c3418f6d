"""The model.onnx and index.npz contracts."""

from __future__ import annotations

import io
from pathlib import Path

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


def _external(name: str, location: str) -> onnx.TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("float_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _model_with_a_subgraph(branch_tensor: onnx.TensorProto) -> bytes:
    """The GSCo interface, with an If whose then-branch holds ``branch_tensor``."""
    out = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])]
    then_branch = helper.make_graph(
        [helper.make_node("Identity", [branch_tensor.name], ["o"])],
        "then",
        [],
        out,
        initializer=[branch_tensor],
    )
    ones = helper.make_tensor("one", TensorProto.FLOAT, [2], [1.0, 1.0])
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["o"], value=ones)], "else", [], out
    )
    true = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=true),
        helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m1"]),
        helper.make_node("Mul", ["m1", "y"], ["logits"]),
        helper.make_node("Identity", ["logits"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_external_data_in_a_subgraph_is_refused_before_any_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime reads a model-from-bytes' external data relative to its working folder.

    With a file of that name there, onnx.checker accepted the model and the hub's
    session would have loaded the file's bytes as weights (a site reading a hub's or a
    registry's files through its model's outputs). Only the top graph was walked.
    """
    (tmp_path / "secret.token").write_bytes(b"\x01" * 8)
    monkeypatch.chdir(tmp_path)
    inline = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.5, 0.5])
    assert check_onnx(_model_with_a_subgraph(inline)).num_classes == 2  # the shape is fine
    with pytest.raises(ArtifactError, match=r"external data \(w\)"):
        check_onnx(_model_with_a_subgraph(_external("w", "secret.token")))
