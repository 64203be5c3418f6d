"""The ``gsco`` console script, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GSCO = str(Path(sys.executable).parent / "gsco")
SUBCOMMANDS = [
    "site",
    "registry",
    "hub",
    "diagnose",
    "generalist",
    "simulate",
    "audit",
    "demo",
]


def gsco(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    if home is not None:
        env["GSCO_SITE_HOME"] = str(home)
    return subprocess.run([GSCO, *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_every_subcommand() -> None:
    result = gsco("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert f" {name} " in result.stdout, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    result = gsco(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: gsco" in result.stdout


def test_version() -> None:
    assert gsco("--version").stdout.strip() == "gsco 0.1.0"


def test_init_sign_and_audit_a_bundle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = gsco("site", "init", "--site-id", "st-marys", home=home)
    assert result.returncode == 0, result.stderr
    assert (home / "keys" / "site.key").stat().st_mode & 0o077 == 0

    again = gsco("site", "init", "--site-id", "st-marys", home=home)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ")
    assert "already a site home" in again.stderr

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "card.json").write_text("{}")
    (bundle / "model.onnx").write_bytes(b"\x08\x01")
    signed = gsco("site", "sign", str(bundle), home=home)
    assert signed.returncode == 0, signed.stderr
    assert "signed 2 files" in signed.stdout

    key = f"st-marys={home / 'keys' / 'site.pub'}"
    audit = gsco("audit", "bundle", str(bundle), "--key", key, "--site", "st-marys")
    assert audit.returncode == 0, audit.stderr
    assert "OK: signed by site st-marys" in audit.stdout
    assert "model.onnx" in audit.stdout

    (bundle / "model.onnx").write_bytes(b"\x08\x02")
    tampered = gsco("audit", "bundle", str(bundle), "--key", key)
    assert tampered.returncode == 1
    assert tampered.stderr.strip() == (
        "error: bundle differs from its signed manifest; changed: model.onnx"
    )
    assert "Traceback" not in tampered.stderr


def test_sign_without_site_home_is_one_clear_line(tmp_path: Path) -> None:
    result = gsco("site", "sign", str(tmp_path), home=tmp_path / "nowhere")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "run 'gsco site init' first" in result.stderr


def test_invalid_site_id(tmp_path: Path) -> None:
    result = gsco("site", "init", "--site-id", "St Mary's", home=tmp_path / "h")
    assert result.returncode == 1
    assert "invalid site id" in result.stderr
    assert not (tmp_path / "h" / "keys" / "site.key").exists()


def test_audit_key_option_syntax(tmp_path: Path) -> None:
    result = gsco("audit", "bundle", str(tmp_path), "--key", "no-equals-sign")
    assert result.returncode == 2
    assert "SITE=PATH" in result.stderr


def test_piped_output_is_never_wrapped_mid_value() -> None:
    import subprocess
    import sys

    code = (
        "from gsco.cli._common import console\n"
        "console().print('val ACC 0.965, AUC 0.985 ' * 20)\n"
        "console(stderr=True).print('x' * 500)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.count("\n") == 1  # one line, 500 characters, into a pipe
    assert "AUC 0.985" in done.stdout
    assert done.stderr.strip() == "x" * 500
