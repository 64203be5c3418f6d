"""Adapters in service with the real vLLM server: verified, loaded, named; bad ones refused.

A real registry (tiny specialists of site-a; site-a and site-b enrolled), the
embedded vLLM CPU server with LoRA on, and real peft adapters of its SmolLM2
weights (tests.adapters). From the registry, a hub serves only the
consortium's adapter: the one its task's adapter role lists, co-signed by
enough of its training sites.
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
from hub import AdapterRefusedError
from hub.web import Hub
from protocol import Mode
from tests.adapters import adapter_bundle, co_signed_role, publish_consortium, reranked_bundle
from tests.conftest import SiteKeys
from tests.hub.conftest import diagnose_modes, hub_config, publish
from tests.servers import RunningRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, site_a: SiteKeys, site_b: SiteKeys) -> Path:
    """An adapter site-a signed, trained by site-a and site-b."""
    return adapter_bundle(
        tmp_path_factory.mktemp("adapter") / "bundle", site_a, trainers=[site_a, site_b]
    )


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


def test_a_verified_adapter_answers_and_is_named_in_provenance(hub: Hub, signed: Path) -> None:
    served = hub.load_adapter(signed)
    assert served is not None
    assert hub.engine is not None
    assert hub.engine.adapters["pneumonia-cxr"] == served
    assert served.path.parent == hub.config.state_dir / "adapters"  # vLLM reads the verified copy
    for response in diagnose_modes(hub):
        used = response.generalist
        assert used is not None
        assert used.model == served.name
        assert used.adapter_digest == served.digest
        assert used.calibration == "contextual"  # calibrated for the adapter, not the base model
    known = hub.engine.calibrations.known()
    assert any(model == served.name for (_, _, model) in known)
    # A mode whose prompts it did not learn is answered by the base model.
    (rad,) = diagnose_modes(hub, (Mode.RAD,))
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
    (response,) = diagnose_modes(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.model == MODEL_NAME
    assert response.generalist.adapter_digest is None


@pytest.mark.parametrize("attack", ["nan-weights", "1e30-weights", "config-path", "auto-mapping"])
def test_an_adapter_with_bad_content_is_refused_and_the_base_model_answers(
    hub: Hub, signed: Path, tmp_path: Path, site_a: SiteKeys, attack: str
) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from tests.adapters import edit_json, resign

    bad = tmp_path / attack
    shutil.copytree(signed, bad)
    if attack.endswith("weights"):
        tensors = load_file(str(bad / "adapter_model.safetensors"))
        value = np.nan if attack == "nan-weights" else 1e30
        save_file({k: np.full_like(v, value) for k, v in tensors.items()},
                  str(bad / "adapter_model.safetensors"))  # fmt: skip
    elif attack == "config-path":
        edit_json(bad / "adapter_config.json", base_model_name_or_path="/etc/passwd")
    else:
        edit_json(bad / "adapter_config.json", auto_mapping={"base_model_class": "os.system"})
    resign(bad, site_a)
    with pytest.raises(AdapterRefusedError, match="INVALID_ADAPTER"):
        hub.load_adapter(bad)
    assert hub.engine is not None
    assert not hub.engine.adapters
    (response,) = diagnose_modes(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.model == MODEL_NAME


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
    (response,) = diagnose_modes(lenient, (Mode.GSCO,))
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
    hub: Hub, signed: Path, registry: RunningRegistry, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    with registry.client() as client:
        ref = publish_consortium(client, signed, [site_a, site_b])
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
    assert served.endorsed_by == ("site-a", "site-b")
    (response,) = diagnose_modes(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.adapter_digest == ref.bundle_digest

    with registry.client() as client:
        assert client.revoke_bundle(ref.bundle_digest, "a test revokes it") == 1
    hub.sync_now()
    assert "pneumonia-cxr" not in hub.engine.adapters
    (response,) = diagnose_modes(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.adapter_digest is None
    assert response.generalist.model == MODEL_NAME


def test_the_registry_refuses_tampered_and_unservable_adapters(
    signed: Path, registry: RunningRegistry, site_a: SiteKeys, site_b: SiteKeys, tmp_path: Path
) -> None:
    from registry import RejectCode, RejectedError
    from tests.adapters import edit_json, resign

    with registry.client() as client:
        files = {p.name: p.read_bytes() for p in signed.iterdir()}
        weights = bytearray(files["adapter_model.safetensors"])
        weights[100] ^= 0x01
        tampered = {**files, "adapter_model.safetensors": bytes(weights)}
        with pytest.raises(RejectedError) as caught:
            client.publish_adapter(tampered, co_signed_role(tampered, [site_a, site_b], None))
        assert caught.value.code is RejectCode.FILE_CHANGED

        dora = tmp_path / "dora"
        shutil.copytree(signed, dora)
        edit_json(dora / "adapter_config.json", use_dora=True)
        resign(dora, site_a)
        with pytest.raises(RejectedError) as caught:
            publish_consortium(client, dora, [site_a, site_b])
        assert caught.value.code is RejectCode.INVALID_ADAPTER


def _policy_for(name: str, weight: float) -> Any:
    from protocol import ArbitrationPolicy, ModePolicy

    fitted = ModePolicy(
        generalist_weight=weight,
        base="voting",
        validation_accuracy={"voting": 0.8, "policy": 0.9},
        weights_tried={"0": 0.8, "2": 0.9},
        gate_p_value=0.01,
        label_bias=(0.25, -0.25),
        sites_agreeing=2,
    )
    return ArbitrationPolicy(
        task_id="pneumonia-cxr",
        labels=("normal", "pneumonia"),
        model=name,
        n_examples=40,
        modes={Mode.GSCO: fitted},
        sites=("site-a", "site-b"),
    )


def test_the_policy_in_the_consortiums_adapter_weighs_its_answers(
    hub: Hub, registry: RunningRegistry, site_a: SiteKeys, site_b: SiteKeys, tmp_path: Path
) -> None:
    """Version 2 of the consortium's adapter carries its policy: served, shown, applied;
    revoked, the base model answers (the consortium's adapter is version 2 or nothing)."""
    assert hub.engine is not None
    v1 = adapter_bundle(tmp_path / "v1", site_a, trainers=[site_a, site_b])
    with registry.client() as client:
        publish_consortium(client, v1, [site_a, site_b])
    hub.sync_now()
    first = hub.engine.adapters["pneumonia-cxr"]
    assert first.card.policy is None
    (response,) = diagnose_modes(hub, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.policy_weight is None  # no policy for this adapter yet

    v2 = adapter_bundle(
        tmp_path / "v2",
        site_b,
        trainers=[site_a, site_b],
        version=2,
        policy=_policy_for(first.name, 2.0).model_copy(update={"model": "adapter"}),
    )
    with registry.client() as client:
        second = publish_consortium(client, v2, [site_a, site_b])
    hub.sync_now()
    served = hub.engine.adapters["pneumonia-cxr"]
    assert served.digest == second.bundle_digest
    shown = hub.engine.policy_in_service("pneumonia-cxr")
    assert shown is not None
    assert shown.modes[Mode.GSCO].model == served.name
    assert shown.modes[Mode.GSCO].generalist_weight == 2.0
    gsco, moed = diagnose_modes(hub)
    assert gsco.generalist is not None
    assert gsco.generalist.adapter_digest == served.digest
    assert gsco.generalist.policy_weight == 2.0
    assert gsco.generalist.calibration == "contextual+bias"
    assert moed.generalist is not None
    assert moed.generalist.policy_weight is None  # the policy holds no moed weight

    with registry.client() as client:
        assert client.revoke_bundle(second.bundle_digest, "a test revokes it") == 1
    hub.sync_now()
    assert "pneumonia-cxr" not in hub.engine.adapters  # not back to v1: v2 is the consortium's
    assert hub.engine.policy_in_service("pneumonia-cxr") is None


def test_one_sites_rogue_adapter_never_reaches_the_hub(
    hub: Hub, signed: Path, registry: RunningRegistry, site_a: SiteKeys, site_b: SiteKeys,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The attack of one enrolled key: its own adapter, version 4294967295, full trust."""
    from protocol import ArbitrationPolicy, ModePolicy
    from registry import RejectCode, RejectedError

    with registry.client() as client:
        consortium = publish_consortium(client, signed, [site_a, site_b])
    hub.sync_now()
    assert hub.engine is not None
    before = [r.label for r in diagnose_modes(hub, (Mode.GSCO, Mode.MOED, Mode.GSCO))]

    full_trust = ModePolicy(
        generalist_weight=100.0,
        validation_accuracy={"policy": 1.0},
        weights_tried={},
        label_bias=(20.0, -20.0),
    )
    rogue = adapter_bundle(
        tmp_path / "rogue",
        site_b,
        version=2**32 - 1,
        policy=ArbitrationPolicy(
            task_id="pneumonia-cxr",
            labels=("normal", "pneumonia"),
            model="rogue",
            n_examples=10,
            modes={Mode.GSCO: full_trust, Mode.MOED: full_trust},
        ),
    )
    with registry.client() as client:
        for attempt in (
            lambda: client.publish(rogue, site_b.private),
            lambda: publish_consortium(client, rogue, [site_b]),
        ):
            with pytest.raises(RejectedError) as caught:
                attempt()
            assert caught.value.code is RejectCode.NO_CONSORTIUM_BACKING
        assert [r.bundle_digest for r in client.bundles() if r.kind == "adapter"] == [
            consortium.bundle_digest
        ]
    hub.sync_now()
    assert hub.engine.adapters["pneumonia-cxr"].digest == consortium.bundle_digest
    after = [r.label for r in diagnose_modes(hub, (Mode.GSCO, Mode.MOED, Mode.GSCO))]
    assert after == before


def test_a_hub_that_cannot_verify_enough_co_signatures_serves_the_base_model(
    hub: Hub, signed: Path, registry: RunningRegistry, site_a: SiteKeys, site_b: SiteKeys
) -> None:
    with registry.client() as client:
        ref = publish_consortium(client, signed, [site_a, site_b])
    strict: Hub = hub.make(min_adapter_signers=3)  # type: ignore[attr-defined]
    assert strict.engine is not None
    assert "pneumonia-cxr" not in strict.engine.adapters
    assert "co-signed by 2" in strict.adapter_warnings["pneumonia-cxr"]
    (response,) = diagnose_modes(strict, (Mode.GSCO,))
    assert response.generalist is not None
    assert response.generalist.model == MODEL_NAME
    # A co-signer's key revoked: the registry's role no longer has its threshold.
    hub.sync_now()
    assert hub.engine is not None
    assert hub.engine.adapters["pneumonia-cxr"].digest == ref.bundle_digest
    with registry.client() as client:
        (key,) = [s.key_id for s in client.sites() if s.site_id == "site-b"]
        client.revoke_key(key, "a test revokes it")
    hub.sync_now()
    assert "pneumonia-cxr" not in hub.engine.adapters
