"""A real registry on loopback with two enrolled sites, and helpers to publish and build hubs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hub.web import Hub, HubConfig
from protocol import DiagnoseResponse, Mode
from registry import InProcessRegistry, Registry
from tests.bundles import read_files, tiny_onnx, write_bundle_files
from tests.conftest import SiteKeys
from tests.servers import RunningRegistry, start_registry


@pytest.fixture
def registry(tmp_path: Path, site_a: SiteKeys, site_b: SiteKeys) -> Iterator[RunningRegistry]:
    server = start_registry(tmp_path / "registry")
    with server.client() as client:
        client.enroll("site-a", site_a.public.pem)
        client.enroll("site-b", site_b.public.pem)
    yield server
    server.stop()


def publish(
    registry: RunningRegistry,
    site: SiteKeys,
    where: Path,
    version: int = 1,
    **card_overrides: Any,
) -> str:
    """Publishes a tiny signed bundle of ``site`` and returns its digest.

    Each site and version gets its own model weights (no two share a blob).
    """
    seed = version * 100 + sum(site.site_id.encode())
    directory = write_bundle_files(
        where / f"{site.site_id}-v{version}",
        site,
        version=version,
        card_overrides=card_overrides or None,
        model=tiny_onnx(seed),
    )
    with registry.client() as client:
        return client.publish_files(read_files(directory), site.private).bundle_digest


def hub_config(registry: RunningRegistry, state_dir: Path, **overrides: Any) -> HubConfig:
    """An anonymous hub without a generalist, syncing only when told."""
    settings: dict[str, Any] = {
        "registry": registry.address,
        "trusted_root": registry.root / "tuf" / "metadata" / "1.root.json",
        "state_dir": state_dir,
        "allow_anonymous": True,
        "sync_interval_s": 3600.0,
        "access_log_fsync": False,
    }
    return HubConfig(**{**settings, **overrides})


@pytest.fixture
def make_hub(registry: RunningRegistry, tmp_path: Path) -> Iterator[Any]:
    """Builds started in-process hubs and closes them after the test."""
    import asyncio

    hubs: list[Hub] = []

    def make(**overrides: Any) -> Hub:
        hub = Hub(hub_config(registry, tmp_path / f"hub-{len(hubs)}", **overrides))
        hubs.append(hub)
        hub.start()
        return hub

    yield make
    for hub in hubs:
        asyncio.run(hub.aclose())


def png(seed: int = 0, size: int = 28, channels: int = 1) -> bytes:
    """A random PNG image."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def post_image(
    url: str,
    image: bytes,
    *,
    filename: str = "x.png",
    media_type: str = "image/png",
    mode: str = "ensemble",
    timeout_s: float = 30,
) -> Any:
    """``POST /v1/diagnose`` of one image as multipart to an anonymous hub at ``url``."""
    import httpx

    return httpx.post(
        url + "/v1/diagnose",
        files={"image": (filename, image, media_type)},
        data={"task_id": "pneumonia-cxr", "mode": mode},
        timeout=timeout_s,
    )


def in_process_hub(
    registry: Registry, state_dir: Path, generalist: Any = None, **overrides: Any
) -> Hub:
    """A started hub syncing from ``registry`` in process (through TUF, no server), no fsync."""
    config = HubConfig(
        **{
            "registry": "in-process",
            "trusted_root": registry.root / "tuf" / "metadata" / "1.root.json",
            "state_dir": state_dir,
            "allow_anonymous": True,
            "sync_interval_s": 3600.0,
            "access_log_fsync": False,
            **overrides,
        }
    )
    hub = Hub(config, generalist=generalist, registry=InProcessRegistry(registry))
    hub.start()
    return hub


def diagnose_modes(
    hub: Hub, modes: tuple[Mode, ...] = (Mode.GSCO, Mode.MOED)
) -> list[DiagnoseResponse]:
    """One pneumonia-cxr diagnosis per mode, each of another random image, in process."""
    import asyncio

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
