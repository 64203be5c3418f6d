"""A tiny, random-weight checkpoint with MedDr's architecture, to test the MedDr path here.

MedDr_0401 is InternVL-Chat-V1-2 fine-tuned: InternViT-6B at 448 px (patch 14),
pixel shuffle by 0.5, an MLP projector and a Llama-architecture language model
(Nous-Hermes-2-Yi-34B), 40B parameters. No vision-language model can be
downloaded here, so :func:`make_tiny_meddr` writes one of the same architecture
and configuration schema with tiny dimensions and seeded random weights:

- ``config.json``: InternVL-Chat-V1-2's schema (``model_type: internvl_chat``,
  ``vision_config`` for ``intern_vit_6b``, ``llm_config`` for Llama, the
  ``Hermes-2`` template name, ``auto_map`` to the remote code), lacking exactly
  what V1-2's lacks (the dynamic-tiling fields, ``ps_version``, the vision
  ``norm_type``), so vLLM refuses or accepts it for the same reasons it would
  MedDr; the image side keeps MedDr's sizes, so an image is 256 tokens;
- ``model.safetensors``: bfloat16 weights named as the reference modeling code
  names them (what vLLM's loader checks);
- a tokenizer: SmolLM2's byte-level BPE with the tokens InternVL adds
  (``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ...) and ChatML's, and no chat
  template of its own (MedDr has none: the recipe passes one);
- the remote code ``auto_map`` names, copied unchanged from the InternVL-Chat-V1-2
  release of OpenGVLab/InternVL (:data:`INTERNVL_SOURCE`), with its licence.

It is not a medical model: its answers are noise. What it proves is that every
piece between the hub and a vision tower works.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generalist.errors import ServeError

__all__ = [
    "IMAGE_TOKENS",
    "INTERNVL_SOURCE",
    "TinyMeddr",
    "image_token_count",
    "make_tiny_meddr",
]

#: Where the remote code in ``generalist/_internvl_v1_2/`` comes from (unchanged files).
INTERNVL_SOURCE = {
    "repository": "https://github.com/OpenGVLab/InternVL",
    "commit": "88a146cd3aa24704783e7ff6e67b26c829c2dded",  # "Release InternVL-Chat-V1.2 (#45)"
    "path": "internvl_chat/internvl/model/internvl_chat",
    "licence": "MIT",
}
_REMOTE_CODE = Path(__file__).resolve().parent / "_internvl_v1_2"
_REMOTE_FILES = (
    "configuration_intern_vit.py",
    "configuration_internvl_chat.py",
    "modeling_intern_vit.py",
    "modeling_internvl_chat.py",
    "flash_attention.py",
)
#: The tokens InternVL-Chat-V1-2's tokenizer adds to its language model's.
INTERNVL_TOKENS = (
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)
_CHATML = ("<|im_start|>", "<|im_end|>")

# MedDr's image side (InternViT-6B-448px-V1-2 and the projector's pixel shuffle).
_IMAGE_SIZE = 448
_PATCH_SIZE = 14
_DOWNSAMPLE_RATIO = 0.5
# Tiny widths: the language model's head size (32) is one vLLM's CPU attention
# supports, and its head counts divide by 2 (tensor parallelism over two ranks).
_VISION = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "layers": 2}
_LLM = {
    "hidden_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "layers": 2,
}


def image_token_count(
    image_size: int = _IMAGE_SIZE,
    patch_size: int = _PATCH_SIZE,
    downsample_ratio: float = _DOWNSAMPLE_RATIO,
) -> int:
    """Tokens one image takes in the prompt: patches, fewer by pixel shuffle's ratio squared.

    448 px at patch 14 is 32 x 32 = 1,024 patches; a ratio of 0.5 folds each 2 x 2
    block into one token: 256 (``<img>`` and ``</img>`` come on top).
    """
    return int((image_size // patch_size) ** 2 * downsample_ratio**2)


#: An image's ``<IMG_CONTEXT>`` tokens in MedDr's prompt (and in the tiny model's).
IMAGE_TOKENS = image_token_count()


@dataclass(frozen=True)
class TinyMeddr:
    """A written tiny checkpoint: its folder, size and what it was made from."""

    path: Path
    parameters: int
    size_bytes: int
    vocab_size: int
    seed: int


def _bfloat16_bytes(values: np.ndarray) -> bytes:
    """``values`` as bfloat16 (round to nearest even), little-endian."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> int:
    """Writes ``tensors`` as one bfloat16 safetensors file; returns the parameter count."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        blob = _bfloat16_bytes(tensors[name])
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for blob in blobs:
            out.write(blob)
    return sum(int(array.size) for array in tensors.values())


def _vision_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """InternViT's parameters under the names ``modeling_intern_vit.py`` gives them."""
    width, inner = _VISION["hidden_size"], _VISION["intermediate_size"]
    positions = (_IMAGE_SIZE // _PATCH_SIZE) ** 2 + 1  # the patches and the class token
    weights = {
        "vision_model.embeddings.class_embedding": rng.normal(0, 0.02, (1, 1, width)),
        "vision_model.embeddings.patch_embedding.weight": rng.normal(
            0, 0.02, (width, 3, _PATCH_SIZE, _PATCH_SIZE)
        ),
        "vision_model.embeddings.patch_embedding.bias": np.zeros(width),
        "vision_model.embeddings.position_embedding": rng.normal(0, 0.02, (1, positions, width)),
    }
    for layer in range(_VISION["layers"]):
        prefix = f"vision_model.encoder.layers.{layer}."
        weights |= {
            prefix + "attn.qkv.weight": rng.normal(0, 0.02, (3 * width, width)),
            prefix + "attn.q_norm.weight": np.ones(width),
            prefix + "attn.k_norm.weight": np.ones(width),
            prefix + "attn.proj.weight": rng.normal(0, 0.02, (width, width)),
            prefix + "attn.proj.bias": np.zeros(width),
            prefix + "mlp.fc1.weight": rng.normal(0, 0.02, (inner, width)),
            prefix + "mlp.fc1.bias": np.zeros(inner),
            prefix + "mlp.fc2.weight": rng.normal(0, 0.02, (width, inner)),
            prefix + "mlp.fc2.bias": np.zeros(width),
            prefix + "norm1.weight": np.ones(width),
            prefix + "norm2.weight": np.ones(width),
            prefix + "ls1": np.full(width, 0.1),  # initializer_factor
            prefix + "ls2": np.full(width, 0.1),
        }
    return weights


def _projector_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``mlp1``: LayerNorm, Linear, GELU, Linear over the pixel-shuffled features."""
    folded = _VISION["hidden_size"] * int(1 / _DOWNSAMPLE_RATIO) ** 2
    width = _LLM["hidden_size"]
    return {
        "mlp1.0.weight": np.ones(folded),
        "mlp1.0.bias": np.zeros(folded),
        "mlp1.1.weight": rng.normal(0, 0.02, (width, folded)),
        "mlp1.1.bias": np.zeros(width),
        "mlp1.3.weight": rng.normal(0, 0.02, (width, width)),
        "mlp1.3.bias": np.zeros(width),
    }


def _language_weights(rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
    """LlamaForCausalLM's parameters under ``language_model.``."""
    width, inner = _LLM["hidden_size"], _LLM["intermediate_size"]
    head = width // _LLM["num_attention_heads"]
    kv = head * _LLM["num_key_value_heads"]
    weights = {
        "language_model.model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, width)),
        "language_model.model.norm.weight": np.ones(width),
        "language_model.lm_head.weight": rng.normal(0, 0.02, (vocab, width)),
    }
    for layer in range(_LLM["layers"]):
        prefix = f"language_model.model.layers.{layer}."
        weights |= {
            prefix + "self_attn.q_proj.weight": rng.normal(0, 0.02, (width, width)),
            prefix + "self_attn.k_proj.weight": rng.normal(0, 0.02, (kv, width)),
            prefix + "self_attn.v_proj.weight": rng.normal(0, 0.02, (kv, width)),
            prefix + "self_attn.o_proj.weight": rng.normal(0, 0.02, (width, width)),
            prefix + "mlp.gate_proj.weight": rng.normal(0, 0.02, (inner, width)),
            prefix + "mlp.up_proj.weight": rng.normal(0, 0.02, (inner, width)),
            prefix + "mlp.down_proj.weight": rng.normal(0, 0.02, (width, inner)),
            prefix + "input_layernorm.weight": np.ones(width),
            prefix + "post_attention_layernorm.weight": np.ones(width),
        }
    return weights


def _config(vocab: int, tokens: dict[str, int]) -> dict[str, object]:
    """InternVL-Chat-V1-2's ``config.json`` schema at tiny widths."""
    vision = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "num_channels": 3,
        "image_size": _IMAGE_SIZE,
        "patch_size": _PATCH_SIZE,
        "hidden_size": _VISION["hidden_size"],
        "num_attention_heads": _VISION["num_attention_heads"],
        "intermediate_size": _VISION["intermediate_size"],
        "num_hidden_layers": _VISION["layers"],
        "qkv_bias": False,
        "qk_normalization": True,
        "use_flash_attn": True,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "dropout": 0.0,
        "drop_path_rate": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 0.1,
    }
    llm = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": _LLM["hidden_size"],
        "intermediate_size": _LLM["intermediate_size"],
        "num_hidden_layers": _LLM["layers"],
        "num_attention_heads": _LLM["num_attention_heads"],
        "num_key_value_heads": _LLM["num_key_value_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 5000000.0,
        "tie_word_embeddings": False,
        "bos_token_id": tokens["<|im_start|>"],
        "eos_token_id": tokens["<|im_end|>"],
        "pad_token_id": tokens["<|endoftext|>"],
        "torch_dtype": "bfloat16",
    }
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": _DOWNSAMPLE_RATIO,
        "force_image_size": _IMAGE_SIZE,
        "select_layer": -1,
        "template": "Hermes-2",
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": "bfloat16",
        "vision_config": vision,
        "llm_config": llm,
    }


def _tokenizer(source: Path, out: Path) -> tuple[int, dict[str, int]]:
    """SmolLM2's tokenizer with InternVL's tokens added; returns (vocab size, special ids)."""
    try:
        document = json.loads((source / "tokenizer.json").read_text())
        vocab: dict[str, int] = document["model"]["vocab"]
        added: list[dict[str, object]] = document.setdefault("added_tokens", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServeError(f"{source}: no readable tokenizer.json to build on ({exc})") from exc
    ids = {str(token["content"]): int(str(token["id"])) for token in added} | vocab
    missing = [token for token in (*_CHATML, "<|endoftext|>") if token not in ids]
    if missing:
        raise ServeError(f"{source}: the tokenizer lacks {', '.join(missing)}")
    next_id = max(ids.values()) + 1
    for token in INTERNVL_TOKENS:
        if token in ids:
            continue
        ids[token] = next_id
        added.append(
            {
                "id": next_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
        next_id += 1
    (out / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False))
    specials = {token: ids[token] for token in (*_CHATML, "<|endoftext|>", *INTERNVL_TOKENS)}
    decoder = {
        str(ids[token]): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in specials
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(INTERNVL_TOKENS),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "additional_special_tokens": list(INTERNVL_TOKENS),
            },
            indent=2,
        )
        + "\n"
    )
    # The embedding rows: every id, rounded up to a multiple of 64 as checkpoints do.
    return -(-next_id // 64) * 64, specials


def make_tiny_meddr(out: Path, tokenizer_from: Path, seed: int = 0) -> TinyMeddr:
    """Writes a tiny random-weight InternVL-Chat-V1-2 (MedDr's architecture) into ``out``.

    ``tokenizer_from`` is a folder with SmolLM2's ``tokenizer.json`` (the embedded
    generalist's model folder). The same seed writes the same weights.

    Raises:
        ServeError: ``out`` exists and is not empty, or the tokenizer is unusable.
        OSError: the folder cannot be written.
    """
    if out.exists() and any(out.iterdir()):
        raise ServeError(f"{out} exists and is not empty: choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    vocab, specials = _tokenizer(tokenizer_from, out)
    rng = np.random.default_rng(seed)
    tensors = _vision_weights(rng) | _projector_weights(rng) | _language_weights(rng, vocab)
    parameters = _write_safetensors(out / "model.safetensors", tensors)
    (out / "config.json").write_text(json.dumps(_config(vocab, specials), indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [specials["<|im_end|>"], specials["<|endoftext|>"]]}) + "\n"
    )
    for name in _REMOTE_FILES:
        shutil.copyfile(_REMOTE_CODE / name, out / name)
    shutil.copyfile(_REMOTE_CODE / "LICENSE", out / "LICENSE-InternVL")
    (out / "TINY-MEDDR.json").write_text(
        json.dumps(
            {
                "what": "a tiny random-weight InternVL-Chat-V1-2 (MedDr's architecture); "
                "not a medical model",
                "seed": seed,
                "parameters": parameters,
                "image_tokens": IMAGE_TOKENS,
                "remote_code": INTERNVL_SOURCE,
                "tokenizer": "SmolLM2-135M's, with InternVL's added tokens",
            },
            indent=2,
        )
        + "\n"
    )
    size = sum(path.stat().st_size for path in out.iterdir() if path.is_file())
    return TinyMeddr(out, parameters, size, vocab, seed)
