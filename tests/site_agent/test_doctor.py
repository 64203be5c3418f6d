"""``gsco site doctor``: each set-up problem is one line that says what to do.

The registry is the real server on loopback. The SuperLink's side of the check
is a TLS handshake, so a loopback TLS listener with the certificate that
``gsco federation init`` makes stands in for it (the real SuperLink is
started in tests/federation; here only its handshake is needed).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from federation import init_consortium
from site_agent import init_site
from site_agent._doctor import DoctorSettings, Finding, examine_site
from site_agent._node_key import node_key
from tests.servers import start_registry
from tests.site_agent.conftest import write_npz

SMALL = {"min_free_disk_bytes": 1, "min_available_memory_bytes": 1}


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback TLS server with the consortium's SuperLink certificate; (address, CA)."""
    consortium = init_consortium(tmp_path / "consortium", "lung", hosts=("127.0.0.1",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(consortium.certificate, consortium.key)
    context.set_alpn_protocols(["h2"])
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # a client that refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", consortium.ca_certificate
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def _by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_ready_site_passes_and_each_problem_says_what_to_do(
    tmp_path: Path, pneumonia_npz: Path, tls_listener: tuple[str, Path]
) -> None:
    superlink, ca = tls_listener
    site = init_site(tmp_path / "home", "st-marys")
    registry = start_registry(tmp_path / "registry")
    try:
        settings = DoctorSettings(
            home=site.root,
            task="pneumonia-cxr",
            data=pneumonia_npz,
            registry=registry.address,
            superlink=superlink,
            ca=ca,
            **SMALL,
        )
        # Not enrolled yet, no SuperNode key yet.
        found = _by_check(examine_site(settings))
        assert not found["enrolment"].ok
        assert str(site.public_key_path) in found["enrolment"].fix
        assert not found["SuperNode key"].ok
        assert "gsco site node-key" in found["SuperNode key"].fix

        with registry.client() as client:
            client.enroll("st-marys", site.public_key_path.read_bytes())
        node_key(site)
        findings = examine_site(settings)
        assert all(f.ok for f in findings), [f.line() for f in findings if not f.ok]
        found = _by_check(findings)
        assert set(found) >= {"site", "site key", "SuperNode key", "task", "data", "registry"}
        assert "TLS verified" in found["SuperLink"].detail
        assert "624 test" in found["data"].detail

        # A key readable by others.
        os.chmod(site.private_key, 0o644)
        found = _by_check(examine_site(settings))
        assert not found["site key"].ok
        assert found["site key"].fix == f"chmod 600 {site.private_key}"
        os.chmod(site.private_key, 0o600)

        # The consortium revoked the site's key.
        with registry.client() as client:
            client.revoke_key(site.config.key_id, "lost laptop")
        found = _by_check(examine_site(settings))
        assert not found["enrolment"].ok
        assert "revoked" in found["enrolment"].detail
    finally:
        registry.stop()
    # The registry gone: unreachable, said once, with what to check.
    found = _by_check(examine_site(settings))
    assert not found["registry"].ok
    assert "did not answer" in found["registry"].detail
    assert "enrolment" not in found


def test_network_task_and_resource_problems(
    tmp_path: Path, pneumonia_npz: Path, tls_listener: tuple[str, Path]
) -> None:
    superlink, ca = tls_listener
    site = init_site(tmp_path / "home", "st-marys")
    other = init_consortium(tmp_path / "other", "other", hosts=("127.0.0.1",))
    base = DoctorSettings(home=site.root, superlink=superlink, ca=ca, **SMALL)

    wrong_ca = _by_check(
        examine_site(DoctorSettings(**{**base.__dict__, "ca": other.ca_certificate}))
    )
    assert not wrong_ca["SuperLink"].ok
    assert "does not verify" in wrong_ca["SuperLink"].detail
    assert "ca.pem" in wrong_ca["SuperLink"].fix

    closed = f"127.0.0.1:{_closed_port()}"
    unreachable = _by_check(examine_site(replace(base, superlink=closed)))
    assert not unreachable["SuperLink"].ok
    assert "unreachable" in unreachable["SuperLink"].detail
    assert "firewall" in unreachable["SuperLink"].fix

    labels = np.arange(40)[:, None] % 5  # five labels for a two-label task
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    bad = write_npz(
        tmp_path / "bad.npz", **{f"{s}_{k}": v for s in ("train", "val", "test")
                                 for k, v in (("images", images), ("labels", labels))},
    )  # fmt: skip
    data = _by_check(
        examine_site(DoctorSettings(home=site.root, task="pneumonia-cxr", data=bad, **SMALL))
    )
    assert data["task"].ok
    assert not data["data"].ok

    declared = tmp_path / "task.yaml"
    declared.write_text(
        "task_id: knee-xr\nmodality: knee X-ray\nlabels: [a, b]\ntask_type: binary\n"
    )
    mismatch = _by_check(
        examine_site(
            DoctorSettings(home=site.root, task="pneumonia-cxr", task_file=declared, **SMALL)
        )
    )
    assert not mismatch["task"].ok
    assert "is not the task" in mismatch["task"].detail
    declared_only = _by_check(
        examine_site(DoctorSettings(home=site.root, task_file=declared, **SMALL))
    )
    assert declared_only["task"].ok
    assert "knee-xr" in declared_only["task"].detail

    greedy = DoctorSettings(
        home=site.root, min_free_disk_bytes=1 << 60, min_available_memory_bytes=1 << 60
    )
    found = _by_check(examine_site(greedy))
    assert not found["disk"].ok
    assert not found["memory"].ok


def test_the_command_prints_one_line_per_check_and_fails_on_a_problem(tmp_path: Path) -> None:
    from tests.federation.conftest import gsco_run

    missing = gsco_run("site", "doctor", "--home", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    lines = missing.stdout.splitlines()
    assert lines[0].startswith("PROBLEM site:")
    assert "gsco site init" in lines[0]
    assert "problem" in lines[-1]

    home = tmp_path / "home"
    assert gsco_run("site", "init", "--site-id", "st-marys", "--home", str(home)).returncode == 0
    assert gsco_run("site", "node-key", "--home", str(home)).returncode == 0
    ready = gsco_run(
        "site", "doctor", "--home", str(home), "--min-disk-gib", "0", "--min-memory-gib", "0"
    )
    assert ready.returncode == 0, ready.stdout
    assert ready.stdout.splitlines()[-1].startswith("0 problems in")


def test_the_registry_timestamp_is_read_as_untrusted_bytes() -> None:
    from site_agent._doctor import _timestamp_expiry

    good = b'{"signed": {"_type": "timestamp", "expires": "2030-01-02T03:04:05Z"}}'
    found = _timestamp_expiry(good)
    assert found is not None
    assert (found.year, found.tzinfo is not None) == (2030, True)
    for bad in (b"[]", b"{}", b'{"signed": []}', b'{"signed": {"expires": 7}}', b"\xff",
                b'{"signed": {"expires": "2030-01-02T03:04:05"}}'):  # fmt: skip
        assert _timestamp_expiry(bad) is None, bad
