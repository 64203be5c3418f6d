"""Evidence examples for adapter tuning: the hub's engine and templates, options shuffled.

The engine is a real hub's (real signed specialists from a registry on
loopback); no generalist is needed to build examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocol import Mode
from site_agent.adapter import evidence_examples
from tests.conftest import SiteKeys
from tests.hub.conftest import png, publish
from tests.servers import RunningRegistry

pytestmark = pytest.mark.slow

FORWARD = "normal, pneumonia"
REVERSED = "pneumonia, normal"


def _examples(hub: Any, **options: Any) -> list[Any]:
    images = [png(i) for i in range(12)]
    labels = ["normal", "pneumonia"] * 6
    return evidence_examples(hub.engine, "pneumonia-cxr", images, labels, **options)


def test_examples_list_the_options_in_a_shuffled_order_and_keep_the_rest(
    registry: RunningRegistry, make_hub: Any, tmp_path: Path, site_a: SiteKeys
) -> None:
    publish(registry, site_a, tmp_path)
    hub = make_hub()
    hub.sync_now()
    plain = _examples(hub, shuffle_options=False)
    shuffled = _examples(hub, seed=3)
    assert all(FORWARD in e.prompt for e in plain)
    orders = {FORWARD in e.prompt for e in shuffled}
    assert orders == {True, False}  # both orders occur
    for a, b in zip(plain, shuffled, strict=True):
        assert (a.target, a.mode) == (b.target, b.mode)
        assert b.prompt.replace(REVERSED, FORWARD) == a.prompt  # only the order differs
    assert [e.mode for e in plain][:3] == [Mode.GSCO, Mode.MOED, Mode.RAD]
    assert [e.prompt for e in _examples(hub, seed=3)] == [e.prompt for e in shuffled]
