"""Contracts of the binary files in a bundle: ``model.onnx`` and ``index.npz``.

Pure checks over bytes, shared by the site agent (before signing), the
registry (on publish), the hub (on load) and the auditor. ``onnx`` is imported
lazily, so installs without it can still check indexes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol._card import IndexMode, SpecialistCard
from protocol._npy import NpyError, read_npz
from protocol.errors import ProtocolError

__all__ = [
    "INDEX_KEYS",
    "MAX_ONNX_IR_VERSION",
    "ArtifactError",
    "OnnxSummary",
    "check_index",
    "check_onnx",
    "load_index",
]

#: The newest ONNX IR version a bundle may use: what every supported onnxruntime
#: (1.18 and later) loads. torch's exporter writes IR 8 at opset 17.
MAX_ONNX_IR_VERSION = 10
#: The arrays of ``index.npz``; nothing else may be in it.
INDEX_KEYS = frozenset({"embeddings", "labels", "group_sizes"})
#: Operator domains a bundle's model may use (the ONNX standard ones).
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


class ArtifactError(ProtocolError):
    """A bundle file breaks its contract (the message says which rule)."""


@dataclass(frozen=True)
class OnnxSummary:
    """What the hub needs to know about a checked model."""

    input_shape: tuple[int | str, ...]
    num_classes: int
    embedding_dim: int
    opsets: Mapping[str, int]


def _dims(value_info: object) -> tuple[int | str, ...]:
    shape = value_info.type.tensor_type.shape  # type: ignore[attr-defined]
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim
    )


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds, its subgraphs' (``If``/``Loop``/``Scan`` bodies) included.

    A tensor with external data names a file that onnxruntime reads relative to its
    working directory when it loads a model from bytes: in a subgraph's initializer it
    once passed the check (only the top graph was walked).
    """
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def check_onnx(data: bytes) -> OnnxSummary:
    """Checks ``model.onnx``: valid ONNX, self-contained, standard ops, GSCo interface.

    Raises:
        ArtifactError: with the rule that failed.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ArtifactError(f"model.onnx is not an ONNX model: {exc}") from exc
    if not 3 <= model.ir_version <= MAX_ONNX_IR_VERSION:
        raise ArtifactError(
            f"model.onnx has ONNX IR version {model.ir_version}; hubs load versions 3 to "
            f"{MAX_ONNX_IR_VERSION} (onnxruntime 1.18 and later): re-export it"
        )
    external = [t.name for t in _all_tensors(model.graph) if uses_external_data(t)]
    if external:
        raise ArtifactError(f"model.onnx references external data ({', '.join(external[:3])})")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ArtifactError(f"model.onnx fails onnx.checker: {str(exc)[:300]}") from exc
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    used = {node.domain for node in model.graph.node} | set(opsets)
    foreign = sorted(used - STANDARD_DOMAINS)
    if foreign or model.functions:
        raise ArtifactError(
            f"model.onnx uses non-standard operator domains or functions: {foreign or 'functions'}"
        )
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if [i.name for i in inputs] != ["image"]:
        raise ArtifactError(
            f"model.onnx must take one input 'image', has {[i.name for i in inputs]}"
        )
    outputs = {o.name: _dims(o) for o in model.graph.output}
    if set(outputs) != {"logits", "embedding"}:
        raise ArtifactError(
            f"model.onnx must output 'logits' and 'embedding', has {sorted(outputs)}"
        )
    input_shape = _dims(inputs[0])
    logits, embedding = outputs["logits"], outputs["embedding"]
    if len(input_shape) != 4 or len(logits) != 2 or len(embedding) != 2:
        raise ArtifactError(
            "model.onnx shapes must be image [N,C,H,W], logits [N,K], embedding [N,D]"
        )
    if not isinstance(logits[1], int) or not isinstance(embedding[1], int):
        raise ArtifactError("model.onnx must have static class and embedding dimensions")
    return OnnxSummary(input_shape, logits[1], embedding[1], opsets)


#: The most bytes the arrays of one ``index.npz`` may hold once inflated (a raw index
#: of 200,000 entries of 1280-d float32 embeddings).
MAX_INDEX_BYTES = 1024**3


def load_index(
    data: bytes, max_entries: int = 2_000_000, max_bytes: int = MAX_INDEX_BYTES
) -> dict[str, NDArray[np.generic]]:
    """Reads ``index.npz`` bytes without unpickling anything.

    Every array's size is read from its header and bounded (``max_bytes`` in all)
    before it is inflated or allocated.

    Raises:
        ArtifactError: not an npz of plain arrays, or too large.
    """
    try:
        arrays = read_npz(data, names=INDEX_KEYS, max_bytes=max_bytes)
    except NpyError as exc:
        raise ArtifactError(f"index.npz is not a readable npz of plain arrays: {exc}") from exc
    if len(arrays["labels"]) > max_entries:
        raise ArtifactError(f"index.npz has more than {max_entries} entries")
    return arrays


def check_index(arrays: Mapping[str, NDArray[np.generic]], card: SpecialistCard) -> None:
    """Checks the index arrays against the card's declared privacy settings.

    Raises:
        ArtifactError: wrong dtypes or shapes, labels out of range, non-finite
            values, a prototype group smaller than k, raw rows not declared as
            raw, or counts that differ from the card's ``entries_per_class``.
    """
    embeddings, labels, sizes = arrays["embeddings"], arrays["labels"], arrays["group_sizes"]
    settings = card.index
    if embeddings.dtype != np.float32 or embeddings.ndim != 2:
        raise ArtifactError(
            f"embeddings must be float32 [M, D], got {embeddings.dtype} {embeddings.shape}"
        )
    if embeddings.shape[1] != settings.embedding_dim:
        raise ArtifactError(
            f"embeddings have {embeddings.shape[1]} dimensions, "
            f"the card says {settings.embedding_dim}"
        )
    count = embeddings.shape[0]
    for name, array in (("labels", labels), ("group_sizes", sizes)):
        if array.dtype != np.int64 or array.shape != (count,):
            raise ArtifactError(f"{name} must be int64 [{count}], got {array.dtype} {array.shape}")
    if not np.isfinite(embeddings).all():
        raise ArtifactError("embeddings hold NaN or infinity")
    if count and (labels.min() < 0 or labels.max() >= len(card.labels)):
        raise ArtifactError("index labels outside the card's label set")
    if settings.mode is IndexMode.NONE and count:
        raise ArtifactError("the card declares no index but index.npz has entries")
    if settings.mode is IndexMode.RAW and count and (sizes != 1).any():
        raise ArtifactError("a raw index has groups of size 1 only")
    if settings.mode is IndexMode.PROTOTYPE and count:
        k = settings.min_group_size or 1
        if sizes.min() < k:
            raise ArtifactError(
                f"a prototype group has {int(sizes.min())} images, fewer than k={k}"
            )
    counts = (
        np.bincount(labels, minlength=len(card.labels)) if count else np.zeros(len(card.labels))
    )
    declared = [settings.entries_per_class.get(label, 0) for label in card.labels]
    if [int(c) for c in counts] != declared:
        raise ArtifactError(
            f"index entries per class {counts.tolist()} differ from the card's {declared}"
        )
