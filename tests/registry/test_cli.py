"""The registry commands and ``gsco site publish``, as people run them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from site_agent import open_site
from tests.bundles import write_bundle_files
from tests.servers import ADMIN_TOKEN, RunningRegistry
from tests.test_cli import gsco


def test_enroll_publish_list_revoke(running: RunningRegistry, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert gsco("site", "init", "--site-id", "st-marys", home=home).returncode == 0
    token = tmp_path / "token"
    token.write_text(ADMIN_TOKEN)
    reg = ["--registry", running.address]
    enrolled = gsco(
        "registry",
        "enroll",
        "--site-id",
        "st-marys",
        "--key",
        str(home / "keys/site.pub"),
        "--admin-token-file",
        str(token),
        *reg,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    site = SimpleNamespace(site_id="st-marys", private=home / "keys" / "site.key")
    bundle = write_bundle_files(tmp_path / "bundle", site)  # type: ignore[arg-type]

    published = gsco("site", "publish", str(bundle), *reg, home=home)
    assert published.returncode == 0, published.stderr
    (record,) = open_site(home).ledger.records()
    assert record.site_id == "st-marys"
    assert record.destination == running.address
    assert f"as {record.bundle_digest}" in published.stdout

    listing = gsco("registry", "ls", *reg)
    assert "st-marys" in listing.stdout
    assert record.bundle_digest[:16] in listing.stdout

    again = gsco("site", "publish", str(bundle), *reg, home=home)
    assert again.returncode == 1
    assert "published this bundle already" in again.stderr
    assert len(open_site(home).ledger.records()) == 1  # nothing left the site this time

    no_token = gsco("registry", "revoke", "--bundle", record.bundle_digest, "--reason", "x", *reg)
    assert no_token.returncode == 1
    assert "admin token" in no_token.stderr
    revoked = gsco(
        "registry",
        "revoke",
        "--bundle",
        record.bundle_digest,
        "--reason",
        "recalled",
        "--admin-token-file",
        str(token),
        *reg,
    )
    assert revoked.returncode == 0, revoked.stderr
    assert "active" not in gsco("registry", "ls", *reg).stdout
    events = [json.loads(line) for line in (running.root / "events.jsonl").read_text().splitlines()]
    # The repeated publication was refused from its header: nothing to log.
    assert [e["kind"] for e in events][-2:] == ["publish", "revoke-bundle"]


def test_publish_refuses_a_bundle_the_site_did_not_sign(
    running: RunningRegistry, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    gsco("site", "init", "--site-id", "st-marys", home=home)
    bundle = write_bundle_files(
        tmp_path / "b", SimpleNamespace(site_id="x", private=None), sign=False
    )  # type: ignore[arg-type]
    result = gsco("site", "publish", str(bundle), "--registry", running.address, home=home)
    assert result.returncode == 1
    assert "not signed" in result.stderr
    assert open_site(home).ledger.records() == []


def test_unreachable_registry_is_one_line(tmp_path: Path) -> None:
    result = gsco("registry", "ls", "--registry", "127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.startswith("error: registry")


def test_health_is_the_standard_grpc_health_service(running: RunningRegistry) -> None:
    from protocol import grpc_health
    from registry import SERVICE_NAME

    assert grpc_health(running.address) == "SERVING"  # what load balancers ask
    assert grpc_health(running.address, service=SERVICE_NAME) == "SERVING"
    healthy = gsco("registry", "health", "--registry", running.address)
    assert healthy.returncode == 0, healthy.stderr
    assert f"registry {running.address}: SERVING" in healthy.stdout

    address = running.address
    running.stop()
    down = gsco("registry", "health", "--registry", address, "--timeout", "2")
    assert down.returncode == 1
    assert down.stderr.startswith(f"error: registry {address}: ")
    assert "Traceback" not in down.stderr
