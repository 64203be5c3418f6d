"""A real registry server on loopback, started as ``gsco registry serve``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SiteKeys
from tests.servers import ADMIN_TOKEN, RunningRegistry, start_registry

__all__ = ["ADMIN_TOKEN", "RunningRegistry", "start_registry"]


@pytest.fixture
def running(tmp_path: Path, site_a: SiteKeys) -> Iterator[RunningRegistry]:
    server = start_registry(tmp_path / "registry", "--max-bundle-mb", "1")
    with server.client() as client:
        client.enroll("site-a", site_a.public.pem)
    yield server
    server.stop()
