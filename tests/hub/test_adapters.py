"""Adapters in service with the real vLLM server: verified, loaded, named; bad ones refused.

A real registry (tiny specialists of site-a), the embedded vLLM CPU server with
LoRA on, and real peft adapters of its SmolLM2 weights (tests.adapters).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from generalist import MODEL_NAME, OpenAICompatibleBackend, OpenAIConfig
from hub import AdapterRefusedError, Hub
from protocol import DiagnoseResponse, Mode
from tests.adapters import adapter_bundle, reranked_bundle
from tests.conftest import SiteKeys
from tests.hub.conftest import hub_config, png, publish
from tests.servers import RunningRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, site_a: SiteKeys) -> Path:
    return adapter_bundle(tmp_path_factory.mktemp("adapter") / "bundle", site_a)


@pytest.fixture
def hub(
    registry: RunningRegistry, site_a: SiteKeys, tmp_path: Path, vllm_url: str
) -> Iterator[Hub]:
    """A started hub with the real generalist; ``hub.make(**overrides)`` builds another.

    Each test's requests run in their own event loop: the backend keeps no
    idle connection, so none outlives the loop that opened it.
    """
    made: list[Hub] = []

    def make(**overrides: Any) -> Hub:
        config = hub_config(
            registry,
            tmp_path / f"hub-{len(made)}",
            generalist=OpenAIConfig(base_url=vllm_url, model=MODEL_NAME, timeout_s=120.0),
            generalist_timeout_s=120.0,
            **overrides,
        )
        assert config.generalist is not None
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        backend = OpenAICompatibleBackend(config.generalist, transport=transport)
        started = Hub(config, generalist=backend)
        made.append(started)
        started.start()
        return started

    publish(registry, site_a, tmp_path / "bundles")
    first = make()
    first.make = make  # type: ignore[attr-defined]
    yield first
    for each in made:
        asyncio.run(each.aclose())


def _diagnose(hub: Hub, modes: tuple[Mode, ...] = (Mode.GSCO, Mode.MOED)) -> list[DiagnoseResponse]:
    assert hub.engine is not None
    engine = hub.engine

    async def ask() -> list[DiagnoseResponse]:
        return [
            (
                await engine.diagnose(
                    request_id=f"r{i}",
                    task_id="pneumonia-cxr",
                    image=png(i),
                    media_type=None,
                    mode=mode,
                )
            ).response
            for i, mode in enumerate(modes)
        ]

    return asyncio.run(ask())


def test_a_verified_adapter_answers_and_is_named_in_provenance(hub: Hub, signed: Path) -> None:
    served = hub.load_adapter(signed)
    assert served is not None
    assert hub.engine is not None
    assert hub.engine.adapters["pneumonia-cxr"] == served
    assert served.path.parent == hub.config.state_dir / "adapters"  # vLLM reads the verified copy
    for response in _diagnose(hub):
        used = response.generalist
        assert used is not None
        assert used.model == served.name
        assert used.adapter_digest == served.digest
        assert used.calibration == "contextual"  # calibrated for the adapter, not the base model
    known = hub.engine.calibrations.known()
    assert any(model == served.name for (_, _, model) in known)
    # A mode whose prompts it did not learn is answered by the base model.
    (rad,) = _diagnose(hub, (Mode.RAD,))
    assert rad.generalist is not None
    assert rad.generalist.model == MODEL_NAME
    assert rad.generalist.adapter_digest is None


def test_a_tampered_adapter_is_refused_and_the_base_model_answers(
    hub: Hub, signed: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(signed, bad)
    weights = bad / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterRefusedError, match="FILE_CHANGED"):
        hub.load_adapter(bad)
    assert hub.engine is not None
    assert not hub.engine.adapters
    assert not (hub.config.state_dir / "adapters").exists() or not any(
        (hub.config.state_dir / "adapters").iterdir()
    )
    (response,) = _diagnose(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.model == MODEL_NAME
    assert response.generalist.adapter_digest is None


def test_an_adapter_of_a_site_that_is_not_enrolled_is_refused(
    hub: Hub, tmp_path: Path, keys_dir: Path
) -> None:
    stranger = SiteKeys(keys_dir, "site-z")
    bundle = adapter_bundle(tmp_path / "stranger", stranger)
    with pytest.raises(AdapterRefusedError, match="UNKNOWN_KEY"):
        hub.load_adapter(bundle)


def test_an_adapter_vllm_refuses_leaves_the_base_model_serving(
    hub: Hub, signed: Path, tmp_path: Path, site_a: SiteKeys
) -> None:
    # A hub configured for rank 32 passes it on; the server (--max-lora-rank 16) refuses it.
    lenient: Hub = hub.make(max_lora_rank=32)  # type: ignore[attr-defined]
    big = reranked_bundle(tmp_path / "r32", site_a, signed, 32)
    assert lenient.load_adapter(big) is None
    assert "refused adapter" in lenient.adapter_warnings["pneumonia-cxr"]
    assert lenient.engine is not None
    assert not lenient.engine.adapters
    (response,) = _diagnose(lenient, (Mode.GSCO,))
    assert not response.degraded
    assert response.generalist is not None
    assert response.generalist.model == MODEL_NAME
    refusals = lenient.metrics.registry.get_sample_value("gsco_hub_adapter_refusals_total")
    assert refusals == 1.0


def test_an_adapter_for_another_base_model_is_refused(
    hub: Hub, tmp_path: Path, site_a: SiteKeys
) -> None:
    bundle = adapter_bundle(tmp_path / "other", site_a, base_model="meddr-40b")
    with pytest.raises(AdapterRefusedError, match="meddr-40b"):
        hub.load_adapter(bundle)


# -- through the registry: published, synced, revoked ------------------------------------


def test_a_published_adapter_is_served_at_the_next_sync_and_a_revoked_one_is_not(
    hub: Hub, signed: Path, registry: RunningRegistry, site_a: SiteKeys
) -> None:
    with registry.client() as client:
        ref = client.publish(signed, site_a.private)
        assert ref.kind == "adapter"
        assert ref.backbone == "generalist-lora"
        assert any(r.kind == "adapter" for r in client.bundles())
    report = hub.sync_now()
    assert report.ok
    assert ref.bundle_digest not in report.loaded  # not a specialist
    assert hub.engine is not None
    served = hub.engine.adapters["pneumonia-cxr"]
    assert served.digest == ref.bundle_digest
    assert served.source == "registry"
    (response,) = _diagnose(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.adapter_digest == ref.bundle_digest

    with registry.client() as client:
        assert client.revoke_bundle(ref.bundle_digest, "a test revokes it") == 1
    hub.sync_now()
    assert "pneumonia-cxr" not in hub.engine.adapters
    (response,) = _diagnose(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.adapter_digest is None
    assert response.generalist.model == MODEL_NAME


def test_the_registry_refuses_tampered_stale_and_unservable_adapters(
    signed: Path, registry: RunningRegistry, site_a: SiteKeys, tmp_path: Path
) -> None:
    from registry import RejectCode, RejectedError
    from tests.adapters import edit_json, resign

    with registry.client() as client:
        files = {p.name: p.read_bytes() for p in signed.iterdir()}
        weights = bytearray(files["adapter_model.safetensors"])
        weights[100] ^= 0x01
        with pytest.raises(RejectedError) as caught:
            client.publish_files(
                {**files, "adapter_model.safetensors": bytes(weights)}, site_a.private
            )
        assert caught.value.code is RejectCode.FILE_CHANGED

        dora = tmp_path / "dora"
        shutil.copytree(signed, dora)
        edit_json(dora / "adapter_config.json", use_dora=True)
        resign(dora, site_a)
        with pytest.raises(RejectedError) as caught:
            client.publish(dora, site_a.private)
        assert caught.value.code is RejectCode.INVALID_ADAPTER

        client.publish(signed, site_a.private)
        again = adapter_bundle(tmp_path / "v1-again", site_a, license="MIT")  # v1 again
        with pytest.raises(RejectedError) as caught:
            client.publish(again, site_a.private)
        assert caught.value.code is RejectCode.STALE_VERSION


def test_the_policy_published_with_an_adapter_weighs_its_answers(
    hub: Hub, signed: Path, registry: RunningRegistry, site_a: SiteKeys, tmp_path: Path
) -> None:
    """Version 2 of the adapter carries its policy: served, shown, applied; revoked, gone."""
    from protocol import ArbitrationPolicy, ModePolicy
    from site_agent.adapter import write_policy_version

    assert hub.engine is not None
    with registry.client() as client:
        first = client.publish(signed, site_a.private)
    hub.sync_now()
    v1 = hub.engine.adapters["pneumonia-cxr"]
    assert v1.card.policy is None
    assert hub.engine.policy_in_service("pneumonia-cxr") is None
    (response,) = _diagnose(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.policy_weight is None  # no policy for this adapter yet

    fitted = ModePolicy(
        generalist_weight=2.0,
        validation_accuracy={"policy": 0.9},
        weights_tried={},
        label_bias=(0.25, -0.25),
    )
    policy = ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=("normal", "pneumonia"),
        model=v1.name,  # fitted on the hub's answers with the first version
        n_examples=40,
        modes={Mode.GSCO: fitted},
    )
    write_policy_version(signed, tmp_path / "v2", policy, site_a.private)
    with registry.client() as client:
        second = client.publish(tmp_path / "v2", site_a.private)
    hub.sync_now()
    v2 = hub.engine.adapters["pneumonia-cxr"]
    assert v2.digest == second.bundle_digest
    assert v2.card.policy is not None
    shown = hub.engine.policy_in_service("pneumonia-cxr")
    assert shown is not None
    assert shown.modes[Mode.GSCO].model == v2.name
    assert shown.modes[Mode.GSCO].generalist_weight == 2.0
    gsco, moed = _diagnose(hub)
    assert gsco.generalist is not None
    assert gsco.generalist.adapter_digest == v2.digest
    assert gsco.generalist.policy_weight == 2.0
    assert gsco.generalist.calibration == "contextual+bias"
    assert moed.generalist is not None
    assert moed.generalist.policy_weight is None  # the policy holds no moed weight

    with registry.client() as client:
        assert client.revoke_bundle(second.bundle_digest, "a test revokes it") == 1
    hub.sync_now()
    assert hub.engine.adapters["pneumonia-cxr"].digest == first.bundle_digest  # back to v1
    assert hub.engine.policy_in_service("pneumonia-cxr") is None
    (response,) = _diagnose(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.policy_weight is None
