"""``gsco site``: what hospital IT runs next to its archive."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, cast

import typer

from gsco.cli._common import HealthAddressOption, fail
from signing import sign_bundle
from site_agent import default_site_home, init_site, open_site
from site_agent.training import DEFAULT_LICENSE

app = typer.Typer(
    help="Site agent: train, export, sign and publish specialists.", no_args_is_help=True
)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Site home folder (default: $GSCO_SITE_HOME or ~/.gsco/site)."),
]

# The options 'gsco site join' and 'gsco site doctor' share.
_SUPERLINK = "The consortium's SuperLink, host:port."
_CA = "The consortium's CA certificate (PEM)."
_DATA = "The site's data (.npz, folder or CSV manifest)."
_REGISTRY = "The consortium's registry, host:port."
TrustedRootOption = Annotated[
    Path | None,
    typer.Option(
        help="The registry's TUF root (1.root.json, from the consortium), for adapter tuning."
    ),
]
GeneralistModelOption = Annotated[
    Path | None,
    typer.Option(
        help="The generalist's base model (transformers folder, from the consortium), for "
        "adapter tuning."
    ),
]
TaskOption = Annotated[
    str | None, typer.Option(help="The catalog task this site trains for (or give --task-file).")
]
TaskFileOption = Annotated[
    Path | None, typer.Option(help="YAML/JSON file declaring your own task.")
]
RegistryCaOption = Annotated[
    Path | None, typer.Option(help="CA certificate of the registry's TLS.")
]
WorkOption = Annotated[
    Path | None, typer.Option(help="Where bundles are written (default: HOME/federated).")
]


@app.command()
def init(
    site_id: Annotated[str, typer.Option("--site-id", help="This site's id, e.g. st-marys.")],
    home: HomeOption = None,
) -> None:
    """Create the site's identity and its ECDSA P-256 signing key (once)."""
    site = init_site(home or default_site_home(), site_id)
    typer.echo(f"site {site.config.site_id} initialised in {site.root}")
    typer.echo(f"public key (give it to the registry admin): {site.public_key_path}")
    typer.echo(f"key id: {site.config.key_id}")


@app.command("node-key")
def node_key(home: HomeOption = None) -> None:
    """Make (once) and show the key this site's Flower SuperNode authenticates with.

    Hand the printed file to the consortium ('gsco federation add-site SITE FILE').
    """
    from site_agent._node_key import node_key as ensure_node_key

    site = open_site(home or default_site_home())
    key = ensure_node_key(site)
    typer.echo(f"SuperNode key {'created' if key.created else 'kept'}: {key.private} (mode 0600)")
    typer.echo(f"public key (give it to the consortium): {key.public}")
    typer.echo(key.public.read_text().strip())


@app.command()
def join(
    superlink: Annotated[str, typer.Option(help=_SUPERLINK)],
    ca: Annotated[Path, typer.Option(help=_CA)],
    data: Annotated[Path, typer.Option(help=_DATA)],
    registry: Annotated[str, typer.Option(help=_REGISTRY, envvar="GSCO_REGISTRY")],
    task: TaskOption = None,
    task_file: TaskFileOption = None,
    registry_ca: RegistryCaOption = None,
    work: WorkOption = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The SuperNode's loopback port.")
    ] = 9094,
    home: HomeOption = None,
    health_address: HealthAddressOption = None,
    trusted_root: TrustedRootOption = None,
    generalist_model: GeneralistModelOption = None,
) -> None:
    """Start this site's Flower SuperNode: it connects out to the consortium and trains here.

    The SuperNode key is made on first use; hand its public key to the consortium
    ('gsco site node-key' shows it) before the first run. Specialists are
    published to the registry exactly as 'gsco site publish' does. With
    --trusted-root and --generalist-model the site also takes part in tuning the
    generalist's adapter. Run 'gsco site doctor' with the same options first.
    """
    from site_agent._join import JoinSettings, supernode_command
    from site_agent.errors import OptionsError

    site = open_site(home or default_site_home())
    settings = JoinSettings(
        superlink=superlink,
        ca=ca,
        task=task,
        data=data,
        registry=registry,
        work=work or site.root / "federated",
        registry_ca=registry_ca,
        local_port=port,
        task_file=task_file,
        health_address=health_address,
        trusted_root=trusted_root,
        generalist_model=generalist_model,
    )
    try:
        command = supernode_command(site, settings)
        task_id = settings.check()
    except OptionsError as exc:
        fail(str(exc), code=2)
    typer.echo(
        f"site {site.config.site_id} joining {superlink} for {task_id}; SuperNode key "
        f"{site.root / 'keys' / 'supernode.pub'}",
        err=True,
    )
    import os

    from protocol import flower_environment

    os.execvpe(command[0], command, flower_environment())  # noqa: S606


@app.command()
def doctor(
    superlink: Annotated[str | None, typer.Option(help=_SUPERLINK)] = None,
    ca: Annotated[Path | None, typer.Option(help=_CA)] = None,
    task: TaskOption = None,
    task_file: TaskFileOption = None,
    data: Annotated[Path | None, typer.Option(help=_DATA)] = None,
    registry: Annotated[str | None, typer.Option(help=_REGISTRY, envvar="GSCO_REGISTRY")] = None,
    registry_ca: RegistryCaOption = None,
    work: WorkOption = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=120.0, help="Seconds to wait for each server.")
    ] = 5.0,
    min_disk_gib: Annotated[
        float, typer.Option(min=0.0, help="Free disk (GiB) needed where bundles are written.")
    ] = 5.0,
    min_memory_gib: Annotated[
        float, typer.Option(min=0.0, help="Available memory (GiB) needed for training.")
    ] = 4.0,
    home: HomeOption = None,
    trusted_root: TrustedRootOption = None,
    generalist_model: GeneralistModelOption = None,
) -> None:
    """Check this site's set-up before a run: one line per check, and what to do.

    Checks the site identity and the permissions of its keys, the task and that
    the data matches it, the registry (reachable, this site enrolled and not
    revoked), the SuperLink (reachable, its certificate verifies against --ca),
    the clock against both, free disk and memory. Takes the options of 'gsco
    site join'; checks only what it is given over the network. Exit status 1
    when any check found a problem.
    """
    from site_agent._doctor import DoctorSettings, examine_site

    root = home or default_site_home()
    findings = examine_site(
        DoctorSettings(
            home=root,
            task=task,
            task_file=task_file,
            data=data,
            registry=registry,
            registry_ca=registry_ca,
            superlink=superlink,
            ca=ca,
            work=work or root / "federated",
            timeout_s=timeout,
            min_free_disk_bytes=int(min_disk_gib * 1024**3),
            min_available_memory_bytes=int(min_memory_gib * 1024**3),
            trusted_root=trusted_root,
            generalist_model=generalist_model,
        )
    )
    for finding in findings:
        typer.echo(finding.line())
    problems = sum(not f.ok for f in findings)
    typer.echo(f"{problems} problem{'s' if problems != 1 else ''} in {len(findings)} checks")
    if problems:
        raise typer.Exit(1)


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory to sign.")],
    home: HomeOption = None,
) -> None:
    """Sign every file of a bundle directory into BUNDLE/model.sig with the site key."""
    site = open_site(home or default_site_home())
    manifest = sign_bundle(bundle, site.private_key)
    typer.echo(f"signed {len(manifest.files)} files of {bundle} as site {site.config.site_id}")
    typer.echo(f"bundle digest: {manifest.digest}")


class IndexModeOption(StrEnum):
    """--index-mode values."""

    prototype = "prototype"
    raw = "raw"
    none = "none"


class WeightsOption(StrEnum):
    """--weights values."""

    default = "default"
    scratch = "scratch"
    hub = "hub"


class HeadOption(StrEnum):
    softmax = "softmax"
    cumulative_link = "cumulative-link"


class DPLayersOption(StrEnum):
    head = "head"
    all = "all"


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Bundle folder to write (must not exist).")],
    task: Annotated[
        str | None,
        typer.Option(help="Task id from the catalog (default: the one --task-file declares)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="MedMNIST .npz, CSV manifest (path,label[,split]) or folder of class folders "
            "(default: the task's MedMNIST file in $GSCO_DATA_DIR or ~/.medmnist)."
        ),
    ] = None,
    task_file: TaskFileOption = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Backbone from the zoo (default: the recipe's search chooses)."),
    ] = None,
    weights: Annotated[
        WeightsOption | None,
        typer.Option(
            help="default: weights shipped in a package where there are some; hub: download "
            "(default: the recipe's)."
        ),
    ] = None,
    input_size: Annotated[
        int | None,
        typer.Option(help="Model input size in pixels (default: the images' own size)."),
    ] = None,
    image_size: Annotated[
        int, typer.Option(help="Size images from folders/CSV/DICOM are stored at.")
    ] = 64,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs (default: from the training-set size).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=2, help="Batch size (default: from the training-set size).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="AdamW learning rate (default: the recipe's).")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Early-stopping patience (epochs) (default: a third).")
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(help="Wall-clock budget for the recipe search and training (default: 30)."),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Left-right mirroring as augmentation (default: where the task allows it).",
        ),
    ] = None,
    head: Annotated[
        HeadOption | None,
        typer.Option(
            help="softmax, or cumulative-link (ordinal tasks: ordered cut points on one score) "
            "(default: softmax; ordinal tasks search both)."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for training (default: every core).")
    ] = None,
    max_train_images: Annotated[
        int | None, typer.Option(help="Train on a random subset of this size (tiny runs).")
    ] = None,
    max_eval_images: Annotated[
        int | None, typer.Option(help="Validate and test on random subsets of this size.")
    ] = None,
    seed: int = 0,
    index_mode: Annotated[
        IndexModeOption,
        typer.Option(help="prototype (default, private) | raw (per-image rows: opt-in) | none."),
    ] = IndexModeOption.prototype,
    index_k: Annotated[int, typer.Option(min=1, help="Minimum images per prototype.")] = 10,
    index_noise: Annotated[
        float, typer.Option(min=0.0, help="Gaussian noise std added to prototypes.")
    ] = 0.0,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(help="Train with DP-SGD (Opacus) to this privacy budget (see --dp-layers)."),
    ] = None,
    dp_delta: Annotated[
        float | None,
        typer.Option(help="DP-SGD delta (default: 1/(10 n) for n training images)."),
    ] = None,
    dp_clip: Annotated[
        float, typer.Option(min=0.0, help="DP-SGD per-example gradient clipping norm.")
    ] = 1.0,
    dp_layers: Annotated[
        DPLayersOption | None,
        typer.Option(
            help="head: train the classifier on the frozen pretrained backbone (BatchNorm "
            "fixed); all: every layer (BatchNorm becomes GroupNorm) (default: head)."
        ),
    ] = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="Bundle version (default: last published + 1).")
    ] = None,
    license_id: Annotated[
        str, typer.Option("--license", help="SPDX id of the model's license.")
    ] = DEFAULT_LICENSE,
    site_id: Annotated[str | None, typer.Option(help="Site id (default: the site home's).")] = None,
    sign_bundle_too: Annotated[
        bool, typer.Option("--sign/--no-sign", help="Sign the bundle with the site key.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Train a specialist on local data and write a bundle folder.

    The bundle holds model.onnx, card.json, index.npz and metrics.json.
    """
    from gsco.cli._progress import TrainingProgress
    from protocol import IndexMode
    from site_agent.errors import OptionsError
    from site_agent.outputs import checkpoints_path, deidentification_report_path
    from site_agent.training import TrainingOptions, plan_training, run_training

    options = TrainingOptions(
        out=out,
        task=task,
        task_file=task_file,
        data=data,
        backbone=backbone,
        weights=weights.value if weights is not None else None,
        input_size=input_size,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        patience=patience,
        max_minutes=max_minutes,
        flip=flip,
        head=head.value if head is not None else None,
        threads=threads,
        max_train_images=max_train_images,
        max_eval_images=max_eval_images,
        seed=seed,
        index_mode=IndexMode(index_mode.value),
        index_k=index_k,
        index_noise=index_noise,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        dp_clip=dp_clip,
        dp_layers=dp_layers.value if dp_layers is not None else None,
        version=version,
        license_id=license_id,
        site_id=site_id,
        sign=sign_bundle_too,
    )
    try:
        plan = plan_training(options, home or default_site_home())
    except OptionsError as exc:  # checked first, before anything is read
        fail(str(exc), code=2)
    dataset = plan.dataset
    recipe, config = plan.recipe, plan.config
    candidates = len(recipe.candidates)
    typer.echo(
        f"training for {plan.entry.task.task_id} on {len(dataset.train)} images "
        f"({len(dataset.val)} val, {len(dataset.test)} test), site {plan.site_id}; recipe: "
        f"{config.input_size} px, batch {config.batch_size}, lr {config.learning_rate:g}, "
        f"{config.epochs} epochs, patience {config.patience}, flip {'on' if config.flip else 'off'}"
        f", budget {recipe.max_minutes:g} min; "
        + (
            f"search: {candidates} candidates x {recipe.rung_epochs} epochs"
            if candidates > 1
            else f"backbone {config.backbone}, no search"
        )
    )
    if "search_left_out" in recipe.reasons:
        typer.echo(f"  not tried: {recipe.reasons['search_left_out']}")
    try:
        with TrainingProgress() as progress:
            result, manifest = run_training(plan, progress, progress.on_trial)
    except KeyboardInterrupt:
        fail(_interrupted(out, checkpoints_path(out)), code=130)
    training = cast(dict[str, object], result.metrics["training"])
    typer.echo(f"trained {result.card.backbone} v{result.card.version}: {training['stop_reason']}")
    test = result.card.metrics
    auc = f"{test.macro_auc:.3f}" if test.macro_auc is not None else "n/a"
    grades = (
        f"  QWK {test.quadratic_weighted_kappa:.3f}  MAE {test.mean_absolute_error:.3f}"
        if test.quadratic_weighted_kappa is not None and test.mean_absolute_error is not None
        else ""
    )
    typer.echo(
        f"test ACC {test.accuracy:.3f}  AUC {auc}  F1 {test.macro_f1:.3f}{grades}  "
        f"ECE {test.ece:.3f}  (temperature {result.card.calibration_temperature:.2f})"
    )
    if result.card.training_privacy is not None:
        spent = result.card.training_privacy
        typer.echo(
            f"DP-SGD: epsilon {spent.epsilon:.2f} at delta {spent.delta:.1e} "
            f"({spent.accountant}, noise {spent.noise_multiplier:.2f}, clip {spent.max_grad_norm})"
        )
        index = result.card.index
        if index.mode is IndexMode.PROTOTYPE and (index.min_group_size or 0) < 20:
            typer.echo(
                f"note: epsilon covers the weights, not the retrieval index (prototypes, "
                f"k={index.min_group_size}). On frozen or weak features k=10 prototypes leaked "
                f"membership in our measurements; consider --index-k 20 or --index-mode none "
                f"(docs/explanation/privacy.md)."
            )
    calibration = cast(dict[str, object], result.metrics["calibration"])
    if calibration.get("warning"):
        typer.echo(f"warning: {calibration['warning']}", err=True)
    typer.echo(f"bundle written to {result.path}")
    if result.deidentification is not None:
        deid = result.deidentification
        typer.echo(
            f"DICOM de-identification: {deid.dicom_files} files; {len(deid.dropped)} attributes "
            f"dropped ({deid.profile_attributes_dropped} of the Basic Profile, "
            f"{deid.private_elements_dropped} private elements); none of "
            f"{deid.output_scan.values_searched} identifying values in any output; "
            f"report {deidentification_report_path(result.path)}"
        )
    if manifest is not None:
        typer.echo(f"signed as site {plan.site_id}; bundle digest {manifest.digest}")


def _interrupted(out: Path, checkpoints: Path) -> str:
    """What an interrupted training run kept, and where."""
    kept = sorted(p.name for p in checkpoints.glob("*.safetensors")) if checkpoints.is_dir() else []
    if not kept:
        with contextlib.suppress(OSError):  # an empty folder is no checkpoint
            checkpoints.rmdir()
        return (
            f"interrupted before any checkpoint was written (during the recipe's search or "
            f"the first epoch): nothing was kept ({out} is free)"
        )
    return (
        f"interrupted: no bundle was written ({out} is free); the weights trained so far are "
        f"kept in {checkpoints} ({', '.join(kept)}: best = the lowest validation loss so far, "
        f"last = the last epoch)"
    )


@app.command()
def publish(
    bundle: Annotated[Path, typer.Argument(help="Signed bundle directory.")],
    registry: Annotated[
        str, typer.Option(help="Registry address host:port.", envvar="GSCO_REGISTRY")
    ] = "127.0.0.1:50051",
    tls_ca: Annotated[
        Path | None, typer.Option(help="CA certificate to verify the registry's TLS.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Publish a signed bundle to the registry and record it in the egress ledger."""
    from site_agent.publishing import publish_bundle

    site = open_site(home or default_site_home())
    published = publish_bundle(
        site, bundle, registry, root_certificates=tls_ca.read_bytes() if tls_ca else None
    )
    ref = published.ref
    typer.echo(
        f"published {ref.task_id}/{ref.backbone} v{ref.version} as {ref.bundle_digest} "
        f"to {registry}; recorded in {site.ledger.path}"
    )
