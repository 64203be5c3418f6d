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
    root: Annotated[Path, typer.Option(help="The registry's storage folder.")],
) -> None:
    """Verify a registry's event log end to end and re-verify every stored bundle.

    The full compliance audit (TUF metadata, privacy settings, PHI scan, ledger
    cross-checks, hub access log) is issue #8.
    """
    from registry import Registry, RejectedError, keyring_of, verify_publication

    store = Registry(root)
    events = store.verify_events()
    typer.echo(f"event log: {events} entries, hash chain intact, head matches the database")
    failures = 0
    for ref in store.bundles(include_revoked=True):
        keys = keyring_of(s for s in store.sites(include_revoked=True) if s.key_id == ref.key_id)
        files = {
            name: store.blobs.get(d) for name, d in store.bundle_files(ref.bundle_digest).items()
        }
        try:
            accepted = verify_publication(files, keys)
            ok = accepted.digest == ref.bundle_digest
        except RejectedError as exc:
            ok = False
            typer.echo(f"  FAIL {ref.bundle_digest[:16]} {exc}")
        failures += not ok
        status = "revoked" if ref.revoked else "active"
        typer.echo(
            f"  {'ok  ' if ok else 'FAIL'} {ref.site_id}/{ref.task_id}/{ref.backbone} "
            f"v{ref.version} {ref.bundle_digest[:16]} ({status})"
        )
    store.close()
    if failures:
        fail(f"{failures} bundle(s) failed verification")
