"""``site_agent.publishing``: nothing leaves a site that its own key did not sign as it is.

The success path (the registry accepts, the ledger records it) runs against the
real registry server in ``tests/registry/test_cli.py`` and the simulations.
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from signing import SigningError
from site_agent import init_site
from site_agent.publishing import publish_bundle
from tests.bundles import write_bundle_files


def _listening_socket() -> socket.socket:
    """A loopback socket that would see any connection attempt (nothing may arrive)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


@pytest.mark.parametrize("fault", ["unsigned", "changed after signing", "another site's key"])
def test_a_bundle_the_site_did_not_sign_as_it_is_never_sent(tmp_path: Path, fault: str) -> None:
    site = init_site(tmp_path / "home", "st-marys")
    other = init_site(tmp_path / "other", "st-marys")  # same id, another key
    signer = other if fault == "another site's key" else site
    bundle = write_bundle_files(
        tmp_path / "bundle",
        SimpleNamespace(site_id="st-marys", private=signer.private_key),  # type: ignore[arg-type]
        sign=fault != "unsigned",
    )
    if fault == "changed after signing":
        model = bundle / "model.onnx"
        model.write_bytes(model.read_bytes() + b"\0")
    listener = _listening_socket()
    try:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(SigningError):
            publish_bundle(site, bundle, address, timeout_s=2)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was made
    finally:
        listener.close()
    assert site.ledger.records() == []
