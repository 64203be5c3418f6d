"""``gsco federation``: the consortium's SuperLink, its certificates and its member sites."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from federation import (
    DEFAULT_PORT,
    OwnCertificate,
    add_site,
    init_consortium,
    list_nodes,
    members,
    open_consortium,
    reconcile,
    remove_site,
    superlink_command,
)
from federation._run import recent_runs
from gsco.cli._common import (
    AggregationOption,
    DpClipOption,
    DpNoiseOption,
    FedAvgLocalEpochsOption,
    HealthAddressOption,
    fail,
)
from protocol import flower_environment

if TYPE_CHECKING:
    from protocol import SiteKey

app = typer.Typer(
    help="Federated training across hospitals: the consortium's SuperLink and its sites.",
    no_args_is_help=True,
)

RootOption = Annotated[
    Path,
    typer.Option(
        "--root",
        help="The consortium folder (default: $GSCO_FEDERATION_ROOT or ~/.gsco/federation).",
        envvar="GSCO_FEDERATION_ROOT",
    ),
]
DEFAULT_ROOT = Path.home() / ".gsco" / "federation"
RegistryOption = Annotated[
    str, typer.Option("--registry", help="Registry address host:port.", envvar="GSCO_REGISTRY")
]
RegistryCaOption = Annotated[
    Path | None, typer.Option("--registry-ca", help="CA certificate of the registry's TLS.")
]


def _sites(registry: str, ca: Path | None) -> list[SiteKey]:
    from registry import RegistryClient

    with RegistryClient(registry, root_certificates=ca.read_bytes() if ca else None) as client:
        return list(client.sites(include_revoked=True))


@app.command()
def init(
    name: Annotated[str, typer.Option(help="The consortium's name, e.g. lung-consortium.")],
    root: RootOption = DEFAULT_ROOT,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="A name or address sites reach the SuperLink by; repeat for more; the first "
            "is the one sites are told (default: 127.0.0.1 and localhost).",
        ),
    ] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The SuperLink's HTTPS port.")
    ] = DEFAULT_PORT,
    certificate: Annotated[
        Path | None, typer.Option(help="The operator's own SuperLink certificate (PEM).")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="Its private key (PEM, unencrypted).")] = None,
    ca: Annotated[Path | None, typer.Option(help="The CA that issued it (PEM).")] = None,
) -> None:
    """Make the consortium folder: a CA and the SuperLink's certificate (or the operator's own)."""
    given = [p for p in (certificate, key, ca) if p is not None]
    if given and len(given) != 3:
        fail("--certificate, --key and --ca go together", code=2)
    own = OwnCertificate(certificate, key, ca) if certificate and key and ca else None
    consortium = init_consortium(
        root, name, hosts=tuple(host or ("127.0.0.1", "localhost")), port=port, own=own
    )
    typer.echo(f"consortium {name} initialised in {consortium.root}")
    typer.echo(f"SuperLink address for sites: {consortium.address}")
    typer.echo(f"CA certificate to give every site: {consortium.ca_certificate}")
    if own is None:
        typer.echo(f"CA key (keep it offline; it signs the SuperLink's certificate): "
                   f"{consortium.root / 'tls' / 'ca.key'}")  # fmt: skip


@app.command()
def serve(
    root: RootOption = DEFAULT_ROOT,
    bind: Annotated[
        str, typer.Option(help="Address the SuperLink listens on (default: all interfaces).")
    ] = "0.0.0.0",  # noqa: S104 - a SuperLink is there to be reached by hospitals
    health_address: HealthAddressOption = None,
) -> None:
    """Run the SuperLink in the foreground: TLS, SuperNode authentication, persistent state.

    Only registered SuperNode keys may connect ('gsco federation add-site'); runs
    never install dependencies at the sites. Stop it with Ctrl-C or SIGTERM.
    """
    consortium = open_consortium(root)
    command = superlink_command(consortium, bind=bind, health_address=health_address)
    typer.echo(
        f"SuperLink of {consortium.config.name} on {bind}:{consortium.config.port} (TLS, node "
        f"authentication); state in {consortium.database}",
        err=True,
    )
    os.execvpe(command[0], command, flower_environment(consortium.flwr_home))  # noqa: S606


@app.command()
def health(
    address: Annotated[
        str, typer.Option(help="The health service's host:port (--health-address).")
    ] = "127.0.0.1:9099",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait.")] = 5.0,
) -> None:
    """Ask a SuperLink's or SuperNode's gRPC health service; exit 0 only when SERVING.

    What the federation and site images' health checks run.
    """
    from gsco.cli._common import check_grpc_health

    check_grpc_health("health service", address, timeout_s=timeout)


@app.command("add-site")
def add_site_command(
    site_id: Annotated[str, typer.Argument(help="The site's id, as enrolled in the registry.")],
    node_key: Annotated[
        Path, typer.Argument(help="The site's SuperNode public key (from 'gsco site node-key').")
    ],
    root: RootOption = DEFAULT_ROOT,
    registry: RegistryOption = "127.0.0.1:50051",
    registry_ca: RegistryCaOption = None,
) -> None:
    """Let an enrolled registry site's SuperNode connect (registers its key with the SuperLink)."""
    consortium = open_consortium(root)
    member = add_site(consortium, site_id, node_key, _sites(registry, registry_ca))
    typer.echo(
        f"site {member.site_id} added: SuperNode {member.node_id}, key sha256 "
        f"{member.node_key_sha256[:16]}"
    )


@app.command("remove-site")
def remove_site_command(
    site_id: Annotated[str, typer.Argument(help="The member site to remove.")],
    root: RootOption = DEFAULT_ROOT,
) -> None:
    """Unregister a site's SuperNode: its key can no longer connect."""
    member = remove_site(open_consortium(root), site_id)
    typer.echo(f"site {member.site_id} removed: SuperNode {member.node_id} unregistered")


@app.command()
def status(
    root: RootOption = DEFAULT_ROOT,
    registry: RegistryOption = "127.0.0.1:50051",
    registry_ca: RegistryCaOption = None,
) -> None:
    """Members and their SuperNodes (online or not); removes sites the registry revoked."""
    consortium = open_consortium(root)
    for member in reconcile(consortium, _sites(registry, registry_ca)):
        typer.echo(
            f"site {member.site_id} removed: it is no longer an enrolled registry site "
            f"(SuperNode {member.node_id} unregistered)"
        )
    nodes = {node.node_id: node.status for node in list_nodes(consortium)}
    listed = members(consortium)
    typer.echo(f"consortium {consortium.config.name} at {consortium.address}: {len(listed)} sites")
    for member in listed:
        typer.echo(
            f"  {member.site_id:<24} node {member.node_id:<20} "
            f"{nodes.get(member.node_id, 'unknown to the SuperLink')}"
        )
    strays = sorted(set(nodes) - {m.node_id for m in listed})
    for node_id in strays:
        typer.echo(f"  (no site)                node {node_id:<20} {nodes[node_id]}: not a member")
    runs = recent_runs(consortium)
    typer.echo(f"runs: {len(runs)}" + (" (latest first)" if runs else ""))
    for summary in runs[:5]:
        typer.echo(f"  {summary}")


@app.command()
def run(
    task: Annotated[str, typer.Option(help="The task every site trains for (a catalog id).")],
    root: RootOption = DEFAULT_ROOT,
    min_sites: Annotated[
        int, typer.Option(min=1, help="Sites that must connect before training starts.")
    ] = 1,
    wait_s: Annotated[
        float, typer.Option(min=1, help="How long to wait for them, seconds.")
    ] = 120.0,
    backbone: Annotated[str, typer.Option(help="Backbone every site trains.")] = (
        "tf_efficientnet_lite0"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Epochs at each site.")] = 5,
    max_minutes: Annotated[
        float | None, typer.Option(min=0.1, help="Training budget per site, minutes.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(min=1e-6, help="Learning rate.")] = 1e-3,
    input_size: Annotated[
        int | None, typer.Option(min=8, help="Input size in pixels (default: the backbone's).")
    ] = None,
    max_eval_images: Annotated[
        int | None, typer.Option(min=1, help="Validation and test images kept per site.")
    ] = None,
    timeout_s: Annotated[
        float, typer.Option(min=1, help="How long the sites may train, seconds.")
    ] = 3600.0,
    fedavg_rounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Then co-train one shared specialist with FedAvg (rounds; the sites' data "
            "must be .npz files).",
        ),
    ] = 0,
    fedavg_local_epochs: FedAvgLocalEpochsOption = 1,
    dp_noise: DpNoiseOption = 0.0,
    dp_clip: DpClipOption = 1.0,
    tune_rounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Then tune the generalist's LoRA adapter over the sites (FedAvg rounds; each "
            "site joined with --trusted-root and --generalist-model, and .npz data).",
        ),
    ] = 0,
    tune_local_epochs: Annotated[
        int, typer.Option(min=1, help="Adapter epochs at each site per round.")
    ] = 1,
    tune_examples_per_site: Annotated[
        int, typer.Option(min=1, help="Validation cases per site the adapter is tuned on.")
    ] = 120,
    tune_policy_cases: Annotated[
        int,
        typer.Option(
            min=0,
            help="Other validation cases per site the adapter's arbitration policy is fitted "
            "on, at the site (at most half its split; 0: no policy, and the hub weighs nothing).",
        ),
    ] = 60,
    tune_modes: Annotated[
        str, typer.Option(help="The prompt modes the adapter learns, comma-separated.")
    ] = "gsco",
    aggregation: AggregationOption = None,
) -> None:
    """Run the GSCo app on the member sites: each trains, signs and publishes its specialist.

    With --fedavg-rounds the sites then co-train one shared specialist (FedAvg,
    optionally with DP), and each publishes it, signed with its own key. With
    --tune-rounds they then tune the generalist's adapter, fit its arbitration
    policy at the sites (only sums and counts leave them), every training site
    checks and co-signs it, and one site publishes it with the policy in its
    card: the registry accepts it only with enough co-signatures.
    """
    from pydantic import ValidationError

    from federation._run import run_federation
    from protocol import FedAvgRequest, RunRequest, TrainingRequest, TuneRequest

    consortium = open_consortium(root)
    try:
        request = RunRequest(
            min_sites=min_sites,
            wait_s=wait_s,
            timeout_s=timeout_s,
            training=TrainingRequest(
                task_id=task,
                backbone=backbone,
                epochs=epochs,
                max_minutes=max_minutes,
                batch_size=batch_size,
                learning_rate=lr,
                input_size=input_size,
                max_eval_images=max_eval_images,
            ),
            fedavg=FedAvgRequest.model_validate(
                {
                    "rounds": fedavg_rounds,
                    "local_epochs": fedavg_local_epochs,
                    "dp_noise_multiplier": dp_noise,
                    "dp_clipping_norm": dp_clip,
                    "aggregation": _aggregation(aggregation),
                }
            ),
            tune=TuneRequest.model_validate(
                {
                    "rounds": tune_rounds,
                    "local_epochs": tune_local_epochs,
                    "examples_per_site": tune_examples_per_site,
                    "policy_cases_per_site": tune_policy_cases,
                    "modes": _modes(tune_modes),
                }
            ),
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(f"the run cannot be asked for: {where}: {first['msg']}", 2)
    result = run_federation(consortium, request, on_line=lambda line: typer.echo(line, err=True))
    typer.echo(f"run of {task} on {consortium.config.name}: results in {result.path}")
    for site, outcome in sorted(result.sites.items()):
        typer.echo(f"  {site:<24} {outcome.get('status', '?'):<12} {outcome.get('detail', '')}")
    if result.adapter is not None:
        typer.echo(adapter_line(result.adapter))
    if result.error:
        fail(result.error)


def _aggregation(name: str | None) -> str | None:
    """``--aggregation``: one of Flower's strategies the run may use."""
    from fedapp import AGGREGATIONS

    if name is not None and name not in AGGREGATIONS:
        fail(f"--aggregation {name!r}: use one of {', '.join(AGGREGATIONS)}")
    return name


def _modes(text: str) -> tuple[str, ...]:
    """``--tune-modes``: generalist modes a policy can weigh, comma-separated."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    allowed = ("gsco", "moed", "rad")
    if not modes or set(modes) - set(allowed):
        fail(f"--tune-modes {text!r}: give one or more of {', '.join(allowed)}")
    return modes


def adapter_line(adapter: dict[str, object]) -> str:
    """One line on the adapter stage: what was published, by whom, and its policy."""
    if not adapter.get("published"):
        return f"  adapter: not published: {adapter.get('error', '?')}"
    co_signers = adapter.get("co_signed_by")
    line = (
        f"  adapter: version {adapter.get('version')} published by {adapter.get('signed_by')} "
        f"(bundle {str(adapter['published'])[:12]}), co-signed by "
        + (", ".join(str(s) for s in co_signers) if isinstance(co_signers, list) else "?")
    )
    policy = adapter.get("policy")
    if isinstance(policy, dict):
        modes = policy.get("modes") or {}
        weights = ", ".join(
            f"{mode} weight {fitted.get('generalist_weight', 0):g}"
            for mode, fitted in modes.items()
            if isinstance(fitted, dict)
        )
        line += (
            f"; policy fitted at {adapter.get('policy_sites')} sites on "
            f"{policy.get('n_examples')} cases: {weights}"
        )
    else:
        line += f"; no policy: {adapter.get('policy_error', 'not asked for')}"
    return line
