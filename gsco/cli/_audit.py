"""``gsco audit``: what compliance auditors run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gsco.cli._common import fail
from signing import KeyRing, TrustedKey, load_public_key, verify_bundle_dir

app = typer.Typer(
    help="Audit bundles, the registry and the hub's access log.", no_args_is_help=True
)


@app.command()
def bundle(
    directory: Annotated[Path, typer.Argument(help="Bundle directory to verify.")],
    keys: Annotated[
        list[str],
        typer.Option("--key", help="SITE=PATH of a trusted public key; repeatable."),
    ],
    site: Annotated[str | None, typer.Option(help="The site the bundle must come from.")] = None,
) -> None:
    """Verify a bundle's signature and every file hash against trusted site keys."""
    trusted = []
    for entry in keys:
        site_id, sep, path = entry.partition("=")
        if not sep or not site_id or not path:
            fail(f"--key takes SITE=PATH, got {entry!r}", code=2)
        trusted.append(TrustedKey(site_id, load_public_key(Path(path))))
    manifest = verify_bundle_dir(directory, KeyRing(trusted), expected_site_id=site)
    typer.echo(f"OK: signed by site {manifest.site_id} (key {manifest.key_id[:16]}…)")
    typer.echo(f"bundle digest: {manifest.digest}")
    for name, digest in sorted(manifest.files.items()):
        typer.echo(f"  {digest}  {name}")


@app.command()
def registry(
    root: Annotated[
        Path | None, typer.Option(help="The registry's storage folder (opened read-only).")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--registry", help="A running registry's address host:port.")
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option(help="CA certificate for the registry's TLS.")
    ] = None,
    trusted_root: Annotated[
        Path | None,
        typer.Option(
            help="The TUF root your hubs were given (1.root.json) (default: the registry's own)."
        ),
    ] = None,
    ledgers: Annotated[
        list[Path] | None,
        typer.Option(
            "--ledger",
            help="A site's egress.jsonl, or a folder searched for them; repeatable.",
        ),
    ] = None,
    access_logs: Annotated[
        list[Path] | None,
        typer.Option(
            "--access-log",
            help="A hub's access.jsonl, or a folder searched for them; repeatable.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.md and report.json.")] = Path(
        "gsco-audit"
    ),
) -> None:
    """Audit a registry end to end, with sites' egress ledgers and hubs' access logs.

    Checks the event log, the TUF metadata, every bundle's signature and hashes,
    version order, index privacy settings (flags raw indexes), personal data in
    cards, metrics and ONNX metadata, and cross-checks the ledgers and access logs.
    Writes report.md and report.json; exits 1 when any check fails.
    """
    from audit import LocalRegistry, RemoteRegistry, find_logs, run_audit
    from audit._sources import RegistrySource

    if (root is None) == (address is None):
        fail("give exactly one of --root FOLDER or --registry HOST:PORT", code=2)
    ledger_files = find_logs(ledgers or [], "egress.jsonl")
    log_files = find_logs(access_logs or [], "access.jsonl")
    for given, found, name in (
        (ledgers, ledger_files, "egress.jsonl"),
        (access_logs, log_files, "access.jsonl"),
    ):
        if given and not found:
            fail(f"no {name} under {', '.join(str(p) for p in given)}", code=2)
    anchor = trusted_root.read_bytes() if trusted_root else None
    source: RegistrySource = (
        LocalRegistry(root) if root is not None else RemoteRegistry(str(address), ca_cert)
    )
    try:
        report = run_audit(source, trusted_root=anchor, ledgers=ledger_files, access_logs=log_files)
    finally:
        source.close()
    json_path, md_path = report.write(out)
    counts = report.as_dict()["counts"]
    typer.echo(
        f"{len(report.inventory.get('sites', []))} site keys, "
        f"{len(report.inventory.get('bundles', []))} bundles, "
        f"{len(ledger_files)} egress ledgers, {len(log_files)} access logs audited"
    )
    for finding in report.failures:
        typer.echo(f"  FAIL {finding.check}: {finding.subject}: {finding.message}")
    typer.echo(
        f"{counts['fail']} failure(s), {counts['flag']} flag(s); wrote {md_path} and {json_path}"
    )
    if not report.passed:
        raise typer.Exit(1)
