"""mkdocs hook: the reference pages, generated from the code when the site is built.

- ``reference/cli.md``: every ``gsco`` command and option, from the Typer app;
- ``reference/http-api.md``: every endpoint and status, from the hub's OpenAPI document;
- ``reference/schemas.md``: the JSON schemas of the task, the specialist and adapter cards,
  the arbitration policy, the diagnosis request and response and a federated run's
  request, from ``protocol``.

Generated, never committed, so they cannot fall behind the code.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click
import typer.main
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def _cli() -> str:
    from gsco.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# The command line",
        "",
        "Generated from the Typer application (`gsco --help` says the same, command by command).",
        "",
    ]

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        context = click.Context(command, info_name=path[-1], parent=parent)
        if len(path) > 1:
            lines.extend([f"{'#' * min(len(path), 4)} `{' '.join(path)}`", ""])
            lines.extend(["```text", command.get_usage(context), "```", ""])
            if command.help:
                lines.extend([command.help.strip(), ""])
            rows = [p.get_help_record(context) for p in command.get_params(context)]
            rows = [row for row in rows if row is not None]
            if rows:
                lines.extend(["| option | meaning |", "| --- | --- |"])
                for name, meaning in rows:
                    text = " ".join(meaning.split()).replace("|", "\\|")
                    lines.append(f"| `{name.replace('|', '/')}` | {text} |")
                lines.append("")
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name], context)

    walk(root, ["gsco"], None)
    return "\n".join(lines) + "\n"


def _openapi() -> dict[str, Any]:
    from hub.web import Hub, HubConfig, create_app, create_client_key

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root.json"
        root.write_text("{}")
        keys = Path(folder) / "keys.json"
        create_client_key(keys, "docs")
        hub = Hub(
            HubConfig(
                registry="in-process",
                trusted_root=root,
                state_dir=Path(folder) / "state",
                api_keys=keys,
            )
        )
        document: dict[str, Any] = create_app(hub).app.openapi()
        hub.executor.shutdown()
    return document


def _http_api() -> str:
    document = _openapi()
    lines = [
        "# The HTTP API",
        "",
        "Generated from the hub's OpenAPI document (a running hub serves it at `/openapi.json`,",
        "and an interactive view at `/docs`).",
        "",
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            lines.extend([f"## `{method.upper()} {path}`", ""])
            summary = (operation.get("description") or operation.get("summary") or "").strip()
            if summary:
                lines.extend([summary, ""])
            if operation.get("security"):
                lines.extend(["Needs an API key (`Authorization: Bearer KEY` or `X-API-Key`).", ""])
            lines.extend(["| status | meaning |", "| --- | --- |"])
            for status, response in operation.get("responses", {}).items():
                lines.append(f"| {status} | {response.get('description', '')} |")
            lines.append("")
    lines.extend(["## The document", "", "```json", json.dumps(document, indent=2), "```", ""])
    return "\n".join(lines)


def _schemas() -> str:
    import protocol

    lines = [
        "# Schemas",
        "",
        'Generated from `protocol` (pydantic, `extra="forbid"`): what every component checks.',
        "",
    ]
    for name in _SCHEMAS:
        model = getattr(protocol, name)
        doc = (model.__doc__ or "").strip().split("\n\n")[0]
        lines.extend([f"## `{name}`", "", " ".join(doc.split()), ""])
        schema = json.dumps(model.model_json_schema(), indent=2)
        lines.extend(["```json", schema, "```", ""])
    return "\n".join(lines)


#: The schemas the reference shows, in this order.
_SCHEMAS = (
    "TaskSpec",
    "SpecialistCard",
    "AdapterCard",
    "ArbitrationPolicy",
    "DiagnoseRequest",
    "DiagnoseResponse",
    "ErrorResponse",
    "RunRequest",
)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Adds the generated reference pages to the site."""
    for name, make in (
        ("reference/cli.md", _cli),
        ("reference/http-api.md", _http_api),
        ("reference/schemas.md", _schemas),
    ):
        files.append(File.generated(config, name, content=make()))
    return files
