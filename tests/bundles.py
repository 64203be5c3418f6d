"""Small, fully valid signed bundles for tests (real ONNX, real signatures, in milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from tests.conftest import SiteKeys, card_dict

EMBEDDING_DIM = 64  # an 8x8 grey image, flattened


def tiny_onnx(seed: int = 0) -> bytes:
    """image [N,1,8,8] -> embedding [N,64] (flatten) -> logits [N,2] (matmul)."""
    weights = np.random.default_rng(seed).normal(size=(EMBEDDING_DIM, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["embedding"], axis=1),
            helper.make_node("MatMul", ["embedding", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_DIM]),
        ],
        [helper.make_tensor("w", TensorProto.FLOAT, [EMBEDDING_DIM, 2], weights.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _tiny_with(seed: int, initializer: Any, nodes: list[Any]) -> bytes:
    """:func:`tiny_onnx` whose logits come out of ``nodes``, which read ``plain_logits``."""
    import onnx

    model = onnx.load_model_from_string(tiny_onnx(seed))
    graph = model.graph
    graph.initializer.append(initializer)
    graph.node[1].output[0] = "plain_logits"
    graph.node.extend(nodes)
    return model.SerializeToString()


def memory_bomb_onnx(elements: int, seed: int = 0) -> bytes:
    """:func:`tiny_onnx` whose every run also fills ``elements`` floats and sums them.

    A few hundred bytes that pass every check of the model contract: the size is a
    constant, so no input or shape bound sees it (onnxruntime only declines to fold
    it at load, above 1 GB).
    """
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    return _tiny_with(
        seed,
        helper.make_tensor("bomb_shape", TensorProto.INT64, [1], [elements]),
        [
            helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], value=one),
            helper.make_node("ReduceSum", ["bomb"], ["bomb_sum"], keepdims=1),
            helper.make_node("Div", ["bomb_sum", "bomb_sum"], ["unit"]),
            helper.make_node("Mul", ["plain_logits", "unit"], ["logits"]),
        ],
    )


def slow_onnx(steps: int = 2000, size: int = 1024, seed: int = 0) -> bytes:
    """:func:`tiny_onnx` whose every run also chains ``steps`` products of ``size``-square matrices.

    Six kilobytes that take seconds to minutes per run (1.3 s for 200 steps here),
    none of it foldable at load: every product depends on the image.
    """
    small = helper.make_tensor("small", TensorProto.FLOAT, [1], [1e-3])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("ConstantOfShape", ["square"], ["matrix"], value=small),
        helper.make_node("Mul", ["matrix", "mean"], ["product0"]),
    ]
    nodes += [
        helper.make_node("MatMul", [f"product{i}", "matrix"], [f"product{i + 1}"])
        for i in range(steps)
    ]
    nodes += [
        helper.make_node("ReduceSum", [f"product{steps}"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "total"], ["zero"]),  # tiny: the logits hardly move
        helper.make_node("Add", ["plain_logits", "zero"], ["logits"]),
    ]
    square = helper.make_tensor("square", TensorProto.INT64, [2], [size, size])
    return _tiny_with(seed, square, nodes)


def external_data_onnx(location: str = "../../../etc/shadow") -> bytes:
    """:func:`tiny_onnx` with its weight moved to an external file at ``location``."""
    import onnx

    model = onnx.load_model_from_string(tiny_onnx())
    weight = model.graph.initializer[0]
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    return model.SerializeToString()


def write_bundle_files(
    directory: Path,
    site: SiteKeys,
    *,
    version: int = 1,
    card_overrides: dict[str, Any] | None = None,
    model: bytes | None = None,
    sign: bool = True,
    padding_bytes: int = 0,
) -> Path:
    """Writes (and signs) a bundle for ``site``: two prototypes per class, k = 10."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(version)
    embeddings = rng.normal(size=(4, EMBEDDING_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.savez(
        directory / "index.npz",
        embeddings=embeddings,
        labels=np.array([0, 0, 1, 1], np.int64),
        group_sizes=np.array([10, 12, 11, 15], np.int64),
    )
    card = card_dict(
        site_id=site.site_id,
        version=version,
        preprocessing={"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]},
        index={
            "mode": "prototype",
            "min_group_size": 10,
            "noise_std": 0.0,
            "embedding_dim": EMBEDDING_DIM,
            "entries_per_class": {"normal": 2, "pneumonia": 2},
        },
    )
    card.update(card_overrides or {})
    (directory / "card.json").write_text(json.dumps(card))
    (directory / "model.onnx").write_bytes(model if model is not None else tiny_onnx(version))
    metrics: dict[str, Any] = {"note": "test bundle"}
    if padding_bytes:
        metrics["padding"] = "x" * padding_bytes
    (directory / "metrics.json").write_text(json.dumps(metrics))
    if sign:
        from signing import sign_bundle

        sign_bundle(directory, site.private)
    return directory


def read_files(directory: Path) -> dict[str, bytes]:
    """A bundle directory as the ``{name: bytes}`` a publication carries."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def publish_to(registry: Any, files: dict[str, bytes], site: SiteKeys) -> Any:
    """Publishes to a :class:`registry.Registry` with the site's signed TUF metadata."""
    from registry import NotFoundError, build_site_targets
    from signing import bundle_digest, digest_files

    site_id = json.loads(files["card.json"])["site_id"]
    try:
        previous = registry.tuf.metadata_bytes(f"{site_id}.json")
    except NotFoundError:
        previous = None
    digest = bundle_digest(digest_files(files))
    return registry.publish(
        files, build_site_targets(previous, site_id, digest, files, site.private)
    )
