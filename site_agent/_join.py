"""Joining a consortium's federation: the site's Flower SuperNode, started next to its archive.

The SuperNode only connects out (to the consortium's SuperLink, with TLS and
the site's own SuperNode key), so it works behind the hospital's firewall and
NAT. Its node config tells the site's ClientApp where the site's home, data
and registry are; it is written to ``HOME/supernode.toml`` (TOML, any
characters in paths) and never leaves the site: what crosses to the
SuperLink are the weights, metrics and counts the app sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol import flat_toml, flower_command
from site_agent._home import SiteHome
from site_agent._node_key import node_key
from site_agent.errors import OptionsError

__all__ = ["JoinSettings", "supernode_command"]

NODE_CONFIG_FILE = "supernode.toml"


@dataclass(frozen=True)
class JoinSettings:
    """Where the consortium is and what this site brings to it."""

    superlink: str  # host:port of the consortium's SuperLink
    ca: Path  # the consortium's CA certificate
    task: str | None  # a catalog task id (None: the one task_file declares)
    data: Path
    registry: str  # host:port of the consortium's registry
    work: Path  # where this site's bundles are written
    registry_ca: Path | None = None
    local_port: int = 9094  # the SuperNode's own loopback API (Flower's default)
    task_file: Path | None = None  # a declared task (YAML or JSON; see load_task_file)
    # Where the SuperNode serves the standard gRPC health service (plain text: keep it
    # on loopback); None: not served. What the site image's health check asks.
    health_address: str | None = None
    # For tuning the generalist's adapter (gsco federation run --tune-rounds): the
    # registry's TUF root (to verify the specialists whose evidence the site renders) and
    # the base model in transformers format. Neither given: this site does not tune.
    trusted_root: Path | None = None
    generalist_model: Path | None = None

    def check(self) -> str:
        """Checks what can be checked before the SuperNode starts; returns the task id.

        Raises:
            OptionsError: an address without a port, an unreadable CA or data path,
                an unknown task, an invalid task file or one that declares another task.
        """
        from cryptography import x509

        from site_agent.data import default_catalog, load_task_file
        from site_agent.errors import DataError

        addresses = [("--superlink", self.superlink), ("--registry", self.registry)]
        if self.health_address is not None:
            addresses.append(("--health-address", self.health_address))
        for name, address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise OptionsError(f"{name} {address!r}: give host:port")
        for name, ca in (("--ca", self.ca), ("--registry-ca", self.registry_ca)):
            if ca is None:
                continue
            try:
                x509.load_pem_x509_certificate(ca.read_bytes())
            except (OSError, ValueError) as exc:
                raise OptionsError(f"{name} {ca}: not a readable PEM certificate ({exc})") from exc
        if not self.data.exists():
            raise OptionsError(f"--data {self.data}: no such file or folder")
        problem = tuning_problem(self.trusted_root, self.generalist_model)
        if problem is not None:
            raise OptionsError(problem)
        if self.task_file is None:
            if self.task is None:
                raise OptionsError("give --task (a catalog task) or --task-file")
            return default_catalog().get(self.task).task.task_id  # TaskNotFoundError names them
        try:
            declared = load_task_file(self.task_file).task.task_id
        except DataError as exc:
            raise OptionsError(f"--task-file: {exc}") from exc
        if self.task is not None and self.task != declared:
            raise OptionsError(f"--task {self.task!r} but {self.task_file} declares {declared!r}")
        return declared


def tuning_problem(trusted_root: Path | None, generalist_model: Path | None) -> str | None:
    """What keeps this site from tuning the adapter with these options (``None``: nothing).

    Neither given is fine (the site does not tune); one without the other is not.
    """
    import json

    if trusted_root is None and generalist_model is None:
        return None
    if trusted_root is None or generalist_model is None:
        return "adapter tuning needs both --trusted-root and --generalist-model"
    try:
        root = json.loads(trusted_root.read_bytes())
        kind = root["signed"]["_type"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"--trusted-root {trusted_root}: not a readable TUF root ({exc})"
    if kind != "root":
        return f"--trusted-root {trusted_root}: TUF {kind} metadata, not the root"
    for needed in ("config.json", "tokenizer_config.json"):
        if not (generalist_model / needed).is_file():
            return (
                f"--generalist-model {generalist_model}: no {needed} (give the base model's "
                "folder in transformers format, as the consortium hands it out)"
            )
    return None


def supernode_command(site: SiteHome, settings: JoinSettings) -> list[str]:
    """Checks ``settings``, writes the node config and returns the ``flower-supernode`` command.

    The SuperNode key is made on first use (see :func:`site_agent._node_key.node_key`).

    Raises:
        OptionsError: see :meth:`JoinSettings.check`.
        ToolNotFoundError: Flower is not installed.
    """
    task = settings.check()
    supernode = flower_command("flower-supernode")  # before anything is written
    key = node_key(site)
    settings.work.mkdir(parents=True, exist_ok=True)
    node_config = {
        "home": str(site.root.resolve()),
        "data": str(settings.data.resolve()),
        "task": task,
        "registry": settings.registry,
        "work": str(settings.work.resolve()),
    }
    if settings.task_file is not None:
        node_config["task-file"] = str(settings.task_file.resolve())
    if settings.registry_ca is not None:
        node_config["registry-ca"] = str(settings.registry_ca.resolve())
    if settings.trusted_root is not None and settings.generalist_model is not None:
        node_config["trusted-root"] = str(settings.trusted_root.resolve())
        node_config["generalist-model"] = str(settings.generalist_model.resolve())
    config_path = site.root / NODE_CONFIG_FILE
    config_path.write_text(flat_toml(node_config), encoding="utf-8")
    return [
        supernode,
        "--root-certificates",
        str(settings.ca.resolve()),
        "--superlink",
        settings.superlink,
        "--auth-supernode-private-key",
        str(key.private),
        "--node-config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.local_port),
        *(
            ["--health-server-address", settings.health_address]
            if settings.health_address is not None
            else []
        ),
    ]
