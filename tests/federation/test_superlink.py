"""A real SuperLink with TLS and SuperNode authentication, and real SuperNodes, on loopback.

``gsco federation init/serve/add-site/status`` as the consortium runs them;
``flower-supernode`` processes as hospitals start them, each with its own
site home and SuperNode key. Every process is started in its own session and
the test checks, at the end, that none is left (SuperExec children included).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from federation import members, open_consortium
from protocol import flower_command, flower_environment, free_loopback_port
from site_agent import open_site
from tests.federation.conftest import (
    GSCO,
    Processes,
    gsco_run,
    node_statuses,
    wait_for_port,
    wait_for_status,
)
from tests.servers import start_registry

pytestmark = pytest.mark.slow


def test_only_member_sites_connect_and_everything_stops(
    tmp_path: Path, processes: Processes
) -> None:
    root = tmp_path / "consortium"
    port = free_loopback_port()
    init = ["federation", "init", "--name", "lung", "--root", str(root)]
    made = gsco_run(*init, "--port", str(port))
    assert made.returncode == 0, made.stderr
    assert f"127.0.0.1:{port}" in made.stdout
    again = gsco_run(*init)
    assert again.returncode == 1
    assert "already" in again.stderr

    registry = start_registry(tmp_path / "registry")
    try:
        reg = ["--registry", registry.address]
        keys: dict[str, Path] = {}
        for site_id in ("st-marys", "royal-free", "outsider"):
            home = tmp_path / site_id
            assert (
                gsco_run("site", "init", "--site-id", site_id, "--home", str(home)).returncode == 0
            )
            shown = gsco_run("site", "node-key", "--home", str(home))
            assert shown.returncode == 0, shown.stderr
            assert "ecdsa-sha2-nistp256" in shown.stdout
            keys[site_id] = home / "keys" / "supernode.pub"
            if site_id != "outsider":  # the registry enrols two sites
                with registry.client() as client:
                    client.enroll(site_id, open_site(home).public_key().pem)

        env = flower_environment()
        link_log = tmp_path / "superlink.log"
        health = f"127.0.0.1:{free_loopback_port()}"
        serve = [GSCO, "federation", "serve", "--root", str(root), "--bind", "127.0.0.1",
                 "--health-address", health]  # fmt: skip
        link = processes.start(serve, link_log, env)
        wait_for_port(port, link, link_log)
        healthy = gsco_run("federation", "health", "--address", health)  # the image's check
        assert healthy.returncode == 0, healthy.stderr
        assert "SERVING" in healthy.stdout

        def add(site_id: str) -> subprocess.CompletedProcess[str]:
            return gsco_run("federation", "add-site", site_id, str(keys[site_id]), "--root",
                         str(root), *reg)  # fmt: skip

        refused = add("outsider")
        assert refused.returncode == 1
        assert "not enrolled in the registry" in refused.stderr
        added = add("st-marys")
        assert added.returncode == 0, added.stderr
        twice = add("st-marys")
        assert twice.returncode == 1
        assert "member already" in twice.stderr
        (member,) = members(open_consortium(root))
        assert node_statuses(root)[member.node_id] == "registered"

        node_health = f"127.0.0.1:{free_loopback_port()}"

        def supernode(site_id: str) -> subprocess.Popen[str]:
            command = [
                flower_command("flower-supernode"),
                "--root-certificates", str(open_consortium(root).ca_certificate),
                "--superlink", f"127.0.0.1:{port}",
                "--auth-supernode-private-key", str(keys[site_id].with_suffix(".key")),
                "--node-config", f'site-id="{site_id}"',
                "--host", "127.0.0.1",
                "--port", str(free_loopback_port()),
                "--max-retries", "3",
                *(["--health-server-address", node_health] if site_id == "st-marys" else []),
            ]  # fmt: skip
            return processes.start(command, tmp_path / f"{site_id}.log", env)

        member_node = supernode("st-marys")
        not_added = supernode("royal-free")  # enrolled in the registry, never added
        wait_for_status(root, member.node_id, "online")
        node_healthy = gsco_run("federation", "health", "--address", node_health)
        assert node_healthy.returncode == 0, node_healthy.stderr
        assert not_added.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "royal-free.log").read_text()

        status = gsco_run("federation", "status", "--root", str(root), *reg)
        assert status.returncode == 0, status.stderr
        assert "st-marys" in status.stdout
        assert "online" in status.stdout

        processes.stop(link)  # a restart keeps the registered sites (persistent database)
        link = processes.start(serve, link_log, env)
        wait_for_port(port, link, link_log)
        assert member.node_id in node_statuses(root)

        with registry.client() as client:  # the registry revokes the site: it leaves
            (site_key,) = [s for s in client.sites() if s.site_id == "st-marys"]
            client.revoke_key(site_key.key_id, "left the consortium")
        after = gsco_run("federation", "status", "--root", str(root), *reg)
        assert after.returncode == 0, after.stderr
        assert "site st-marys removed" in after.stdout
        assert members(open_consortium(root)) == []

        processes.stop(member_node)
        processes.stop(link)
        down = gsco_run("federation", "health", "--address", health, "--timeout", "2")
        assert down.returncode == 1
        assert down.stderr.startswith(f"error: health service {health}: ")
    finally:
        registry.stop()
    assert processes.leftovers() == {}
