"""``gsco hub``: run the diagnosis API; ``gsco diagnose``: call it."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gsco.cli._common import console
from protocol import Mode

if TYPE_CHECKING:
    from generalist import OpenAIConfig

app = typer.Typer(help="The hub's diagnosis API.", no_args_is_help=True)


@app.command()
def serve(
    registry: Annotated[
        str, typer.Option(help="Registry address host:port.", envvar="GSCO_REGISTRY")
    ],
    trusted_root: Annotated[
        Path,
        typer.Option(help="The registry's TUF root, obtained out of band (registry trust-root)."),
    ],
    state_dir: Annotated[
        Path, typer.Option(help="Folder for the TUF metadata cache and the access log.")
    ] = Path("hub-state"),
    api_keys: Annotated[
        Path | None, typer.Option(help="Client key file (gsco hub add-client writes it).")
    ] = None,
    allow_anonymous: Annotated[
        bool, typer.Option(help="Serve without API keys (loopback demos only).")
    ] = False,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs TLS.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate for HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for HTTPS.")] = None,
    behind_tls_proxy: Annotated[
        bool,
        typer.Option(help="Allow plain HTTP beyond loopback: a TLS proxy terminates in front."),
    ] = False,
    registry_ca: Annotated[
        Path | None, typer.Option(help="CA certificate of the registry's TLS.")
    ] = None,
    generalist_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL of the generalist, e.g. http://127.0.0.1:8000/v1 "
            "(default: the embedded CPU server, if running).",
            envvar="GSCO_GENERALIST_URL",
        ),
    ] = None,
    generalist_model: Annotated[
        str | None, typer.Option(help="Served model name (default: the embedded one).")
    ] = None,
    generalist_sees_images: Annotated[
        bool, typer.Option(help="Send the image to the generalist (a vision-language model).")
    ] = False,
    generalist_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds before a degraded ensemble answer.")
    ] = 30.0,
    generalist_settings: Annotated[
        Path | None,
        typer.Option(
            help="The generalist's client settings file (hub-generalist.json, written by gsco "
            "generalist meddr-recipe or serve --model tiny-meddr); replaces the other "
            "--generalist-* options except --generalist-timeout when given.",
        ),
    ] = None,
    no_generalist: Annotated[
        bool, typer.Option(help="Run without a generalist (every answer is an ensemble).")
    ] = False,
    sync_interval: Annotated[float, typer.Option(min=0.5, help="Seconds between syncs.")] = 30.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body.")] = 20.0,
    max_image_megapixels: Annotated[
        float,
        typer.Option(min=0.001, help="Largest image, width x height x frames (DICOM), in MP."),
    ] = 16.0,
    max_pixel_data_mb: Annotated[
        float,
        typer.Option(
            min=0.001, help="Largest decoded pixel data (rows x columns x samples x frames x bits)."
        ),
    ] = 64.0,
    max_in_flight: Annotated[
        int,
        typer.Option(
            min=1,
            help="Diagnoses processed at once (the largest batch; memory: this x "
            "--max-pixel-data-mb).",
        ),
    ] = 16,
    max_run_memory_mb: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="What the specialists' runs may allocate at once, all together (onnxruntime's "
            "shared arena; weights not counted). A run that needs more fails alone.",
        ),
    ] = 4096.0,
    max_run_seconds: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="A specialist's run still going after this is stopped (that specialist is "
            "left out of the answer).",
        ),
    ] = 30.0,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request body may take to arrive (then 408).")
    ] = 30.0,
    policies: Annotated[
        Path | None,
        typer.Option(help="Arbitration policies fitted on validation (JSON, from gsco simulate)."),
    ] = None,
    adapter: Annotated[
        list[Path] | None,
        typer.Option(
            help="A signed LoRA adapter bundle of the generalist to serve (repeatable; pinned "
            "for its task, the operator's decision: no consortium co-signatures needed). The "
            "consortium's adapters published to the registry are served without this. The "
            "verified copy goes to STATE/adapters: the vLLM server must read that folder."
        ),
    ] = None,
    min_adapter_signers: Annotated[
        int,
        typer.Option(
            min=2,
            help="The fewest training sites whose co-signatures put a registry adapter in "
            "service here (the registry's threshold applies too, if higher).",
        ),
    ] = 2,
    max_lora_rank: Annotated[
        int, typer.Option(min=1, help="The generalist's --max-lora-rank.")
    ] = 16,
    average_option_orders: Annotated[
        bool,
        typer.Option(
            help="Ask the generalist with the options as given and reversed and average its "
            "label scores, so that decisions do not follow option order (twice the requests)."
        ),
    ] = True,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds a request's headers may take (then the connection closes)."
        ),
    ] = 10.0,
    max_queue: Annotated[int, typer.Option(min=0, help="Waiting requests before 503.")] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Threads for decoding, onnxruntime and faiss (default: the CPU cores this "
            "process may use).",
        ),
    ] = None,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Dynamic batching: how long a batch waits for requests already being "
            "decoded (never when none is; 0: no wait).",
        ),
    ] = 2.0,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Dynamic batching: requests per batch (1: off).")
    ] = 16,
    gpu: Annotated[
        bool | None,
        typer.Option("--gpu/--cpu", help="Force or forbid CUDA (default: CUDA if present)."),
    ] = None,
) -> None:
    """Run the diagnosis API until interrupted (Ctrl-C)."""
    from hub import RuntimeOptions
    from hub.web import Hub, HubConfig, ServerOptions, serve

    server_options = ServerOptions(
        tls_cert=tls_cert,
        tls_key=tls_key,
        behind_tls_proxy=behind_tls_proxy,
        header_timeout_s=header_timeout,
    )
    server_options.check(host)
    generalist = None
    if not no_generalist:
        generalist = _generalist(
            generalist_settings,
            generalist_url,
            generalist_model,
            sees_images=generalist_sees_images,
            timeout_s=generalist_timeout,
        )
    config = HubConfig(
        registry=registry,
        trusted_root=trusted_root,
        state_dir=state_dir,
        api_keys=api_keys,
        allow_anonymous=allow_anonymous,
        registry_ca=registry_ca,
        generalist=generalist,
        sync_interval_s=sync_interval,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_image_pixels=int(max_image_megapixels * 1_000_000),
        max_pixel_data_bytes=int(max_pixel_data_mb * 1024 * 1024),
        max_in_flight=max_in_flight,
        body_timeout_s=body_timeout,
        policies=policies,
        adapters=tuple(adapter or ()),
        max_lora_rank=max_lora_rank,
        min_adapter_signers=min_adapter_signers,
        average_option_orders=average_option_orders,
        max_queue=max_queue,
        workers=workers,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        generalist_timeout_s=generalist_timeout,
        runtime=RuntimeOptions(
            use_gpu=gpu,
            max_run_memory_bytes=int(max_run_memory_mb * 1024 * 1024),
            max_run_seconds=max_run_seconds,
        ),
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    hub = Hub(config)
    listener = socket.create_server((host, port))
    bound = listener.getsockname()[1]
    typer.echo(
        f"gsco hub: serving on {server_options.scheme}://{host}:{bound} (docs at /docs)", err=True
    )
    sys.stderr.flush()
    serve(listener, hub, server_options)


@app.command("add-client")
def add_client(
    client_id: Annotated[str, typer.Argument(help="A name for the client application.")],
    keys: Annotated[Path, typer.Option(help="The hub's API key file (created if missing).")],
) -> None:
    """Create an API key for a client; it is printed once and only its hash is kept."""
    from hub.web import create_client_key

    key = create_client_key(keys, client_id)
    typer.echo(key)
    typer.echo(f"(stored as a sha256 hash in {keys}; this key is not shown again)", err=True)


@app.command("remove-client")
def remove_client(
    client_id: Annotated[str, typer.Argument(help="The client whose key to revoke.")],
    keys: Annotated[Path, typer.Option(help="The hub's API key file.")],
) -> None:
    """Revoke a client's API key. A running hub refuses it within a second, no restart needed."""
    from hub.web import remove_client_key

    remove_client_key(keys, client_id)
    typer.echo(f"removed {client_id} from {keys}; running hubs reload it within a second")


@app.command()
def health(
    hub_url: Annotated[
        str, typer.Option("--hub", help="The hub's URL.", envvar="GSCO_HUB")
    ] = "http://127.0.0.1:8080",
    ca: Annotated[
        Path | None, typer.Option(help="CA certificate of the hub's TLS (https URLs).")
    ] = None,
    ready: Annotated[
        bool, typer.Option("--ready", help="Ask /readyz: at least one task is served.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait.")] = 5.0,
) -> None:
    """Ask the hub's /healthz (or /readyz); exit 0 only on 200. The hub image's health check."""
    import ssl

    import httpx

    from gsco.cli._common import fail

    url = hub_url.rstrip("/") + ("/readyz" if ready else "/healthz")
    verify = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    try:
        response = httpx.get(url, timeout=timeout, verify=verify)
    except httpx.HTTPError as exc:
        fail(f"hub {url}: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        fail(f"hub {url}: HTTP {response.status_code}")
    typer.echo(f"hub {url}: {response.status_code}")


def diagnose(
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG, DICOM or .npy files.")],
    task: Annotated[str, typer.Option(help="Task id, e.g. pneumonia-cxr.")],
    hub_url: Annotated[
        str, typer.Option("--hub", help="The hub's URL.", envvar="GSCO_HUB")
    ] = "http://127.0.0.1:8080",
    mode: Annotated[Mode, typer.Option(help="Arbitration mode.")] = Mode.GSCO,
    top_k: Annotated[int, typer.Option(min=1, max=50, help="Retrieved cases.")] = 5,
    api_key: Annotated[str | None, typer.Option(help="API key.", envvar="GSCO_API_KEY")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON response per line.")] = False,
) -> None:
    """Diagnose images through a hub and print a table (or JSON)."""
    from rich.table import Table

    from hub.errors import HubError
    from hub.web import HubClient

    for image in images:
        if not image.is_file():
            raise HubError(f"no such image file: {image}")
    table = Table("image", "label", "score", "mode", "specialists", "evidence", "ms")
    with HubClient(hub_url, api_key) as client:
        for image in images:
            response = client.diagnose(image, task, mode=mode, top_k=top_k)
            if as_json:
                typer.echo(response.model_dump_json())
                continue
            score = response.scores.get(response.label) if response.scores else None
            votes = ", ".join(
                f"{p.specialist.site_id}:{p.label} {p.probability:.2f}" for p in response.moed
            )
            used = response.mode_used.value + (" (degraded)" if response.degraded else "")
            table.add_row(
                image.name,
                response.label,
                f"{score:.2f}" if score is not None else "-",
                used,
                str(len(response.specialists)),
                votes,
                f"{response.timings.total_ms:.0f}",
            )
            for warning in response.warnings:
                typer.echo(f"warning: {image.name}: {warning}", err=True)
    if not as_json:
        console().print(table)


def _generalist(
    settings: Path | None,
    url: str | None,
    model: str | None,
    *,
    sees_images: bool,
    timeout_s: float,
) -> OpenAIConfig:
    """The hub's generalist: a settings file, a URL, or the embedded server if it runs."""
    from dataclasses import replace

    from generalist import MODEL_NAME, EmbeddedServer, OpenAIConfig, read_hub_settings
    from hub.errors import HubConfigError

    if settings is not None:
        try:
            config = read_hub_settings(settings)
        except ValueError as exc:
            raise HubConfigError(str(exc)) from exc
        # The recipe's timeout is sized for MedDr on GPUs: --generalist-timeout can lengthen
        # it, not cut it below what the recipe needs.
        return replace(config, timeout_s=max(config.timeout_s, timeout_s))
    if url is None:
        state = EmbeddedServer().state()
        if state is None:
            raise HubConfigError(
                "no generalist: pass --generalist-url, start one with gsco generalist serve, "
                "or pass --no-generalist"
            )
        url = state.url
    return OpenAIConfig(
        base_url=url, model=model or MODEL_NAME, sees_images=sees_images, timeout_s=timeout_s
    )
