"""``gsco site doctor``: what a hospital's set-up trips on, checked before a run.

Each check gives one :class:`Finding`: what it saw and, for a problem, what to
do. The checks follow what Flower and NVFlare deployments most often get
wrong: a site identity or key missing or readable by others, data that does
not match the task, a registry that is unreachable or has not enrolled (or
has revoked) this site's key, a SuperLink unreachable from behind the
firewall or whose certificate does not verify against the consortium's CA,
a clock outside the certificates' and the registry metadata's validity, too
little disk or memory. Only what the settings name is checked over the
network; nothing is sent but TLS handshakes and the registry's public reads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol.errors import GscoError
from site_agent._home import SiteHome, open_site

__all__ = ["DoctorSettings", "Finding", "examine_site"]

_GIB = 1024**3


@dataclass(frozen=True)
class Finding:
    """One check's outcome."""

    check: str
    ok: bool
    detail: str
    fix: str = ""  # what to do (problems only)

    def line(self) -> str:
        """The finding as one line of the report."""
        text = f"{'ok' if self.ok else 'PROBLEM':8}{self.check}: {self.detail}"
        return text + (f" -> {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class DoctorSettings:
    """What to check; a missing address or path skips the checks that need it."""

    home: Path
    task: str | None = None  # a catalog task id
    task_file: Path | None = None
    data: Path | None = None
    registry: str | None = None  # host:port
    registry_ca: Path | None = None
    superlink: str | None = None  # host:port
    ca: Path | None = None  # the consortium's CA (the SuperLink's TLS)
    work: Path | None = None  # where bundles are written (default: the home)
    timeout_s: float = 5.0  # seconds, per network check
    min_free_disk_bytes: int = 5 * _GIB  # bytes free where bundles are written
    min_available_memory_bytes: int = 4 * _GIB  # bytes (adapter tuning peaks near 4.3 GB)
    clock_tolerance_s: float = 300.0  # seconds of skew tolerated against certificates
    trusted_root: Path | None = None  # the registry's TUF root (adapter tuning)
    generalist_model: Path | None = None  # the base model, transformers folder (adapter tuning)


def examine_site(settings: DoctorSettings) -> list[Finding]:
    """Runs every check that ``settings`` allows, in order; never raises for a failed check."""
    site, findings = _home(settings.home)
    if site is not None:
        findings.append(_key_file("site key", site.private_key, "gsco site init"))
        node_key = site.root / "keys" / "supernode.key"
        findings.append(_key_file("SuperNode key", node_key, "gsco site node-key"))
    if settings.task is not None or settings.task_file is not None:
        findings.extend(_task_and_data(settings))
    if settings.registry is not None:
        findings.extend(_registry(settings, site))
    if settings.superlink is not None:
        findings.extend(_superlink(settings))
    if settings.trusted_root is not None or settings.generalist_model is not None:
        findings.append(_tuning(settings))
    findings.append(_flower())
    findings.append(_disk(settings.work or settings.home, settings.min_free_disk_bytes))
    findings.append(_memory(settings.min_available_memory_bytes))
    return findings


def _tuning(settings: DoctorSettings) -> Finding:
    from site_agent._join import tuning_problem

    problem = tuning_problem(settings.trusted_root, settings.generalist_model)
    if problem is not None:
        return Finding(
            "adapter tuning", False, problem, "ask the consortium for its TUF root and base model"
        )
    return Finding(
        "adapter tuning", True, f"TUF root and base model ({settings.generalist_model}) present"
    )


def _home(root: Path) -> tuple[SiteHome | None, list[Finding]]:
    try:
        site = open_site(root)
    except GscoError as exc:
        return None, [
            Finding("site", False, str(exc), f"gsco site init --home {root} --site-id SITE")
        ]
    detail = f"{site.config.site_id} in {root} (key {site.config.key_id[:12]})"
    return site, [Finding("site", True, detail)]


def _key_file(check: str, path: Path, makes_it: str) -> Finding:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return Finding(check, False, f"{path} is missing", f"run '{makes_it}'")
    except OSError as exc:
        return Finding(check, False, f"{path}: {exc}", "check the file's owner and permissions")
    if mode & 0o077:
        return Finding(
            check,
            False,
            f"{path} is readable by others (mode {mode:04o})",
            f"chmod 600 {path}",
        )
    return Finding(check, True, f"{path} (mode {mode:04o})")


def _task_and_data(settings: DoctorSettings) -> Iterator[Finding]:
    from site_agent.data import default_catalog, load_local_data, load_task_file

    try:
        catalog = default_catalog()
        declared = load_task_file(settings.task_file) if settings.task_file else None
        if declared is not None:
            catalog = catalog.with_task(declared)
        entry = catalog.get(settings.task) if settings.task is not None else declared
    except GscoError as exc:
        yield Finding("task", False, str(exc), "name a catalog task or a valid --task-file")
        return
    if entry is None or (declared is not None and entry.task != declared.task):
        yield Finding(
            "task",
            False,
            f"--task {settings.task!r} is not the task {settings.task_file} declares",
            "give one of them, or the same task in both",
        )
        return
    task = entry.task
    yield Finding("task", True, f"{task.task_id}: {len(task.labels)} labels ({task.task_type})")
    if settings.data is None:
        return
    try:
        dataset = load_local_data(settings.data, entry)
    except GscoError as exc:  # every data error, and an image that does not decode
        yield Finding(
            "data", False, str(exc), "point --data at this task's .npz, folder or manifest"
        )
        return
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    counts = {name: len(split.labels) for name, split in splits.items()}
    present = sorted({int(v) for split in splits.values() for v in split.labels})
    detail = ", ".join(f"{n} {name}" for name, n in counts.items())
    if counts.get("train", 0) == 0 or counts.get("val", 0) == 0:
        yield Finding("data", False, f"{detail} images", "a site needs train and val images")
    elif len(present) < 2:
        yield Finding(
            "data", False, f"{detail} images, one label only", "check the labels in --data"
        )
    else:
        yield Finding(
            "data", True, f"{detail} images; {len(present)} of {len(task.labels)} labels occur"
        )


def _registry(settings: DoctorSettings, site: SiteHome | None) -> Iterator[Finding]:
    from registry import RegistryClient, RegistryError

    assert settings.registry is not None
    try:
        roots = settings.registry_ca.read_bytes() if settings.registry_ca else None
    except OSError as exc:
        yield Finding("registry", False, f"--registry-ca: {exc}", "give the registry's CA file")
        return
    try:
        with RegistryClient(
            settings.registry, root_certificates=roots, timeout_s=settings.timeout_s
        ) as client:
            client.wait_ready(settings.timeout_s)
            keys = client.sites(include_revoked=True)
            expires = _timestamp_expiry(client.fetch_metadata("timestamp.json"))
    except RegistryError as exc:
        yield Finding(
            "registry",
            False,
            f"{settings.registry} did not answer ({exc})",
            "check the address, --registry-ca, and that outbound connections to it are open",
        )
        return
    yield Finding("registry", True, f"{settings.registry} answers ({len(keys)} site keys)")
    if site is not None:
        mine = [k for k in keys if k.key_id == site.config.key_id]
        if not mine:
            yield Finding(
                "enrolment",
                False,
                f"this site's key {site.config.key_id[:12]} is not enrolled",
                f"hand {site.public_key_path} to the consortium (gsco registry enroll)",
            )
        elif mine[0].revoked:
            yield Finding(
                "enrolment",
                False,
                f"the consortium revoked this site's key {site.config.key_id[:12]}",
                "ask the consortium; a new key must be enrolled before publishing",
            )
        else:
            yield Finding("enrolment", True, f"{mine[0].site_id} enrolled, not revoked")
    if expires is None:
        yield Finding(
            "registry metadata",
            False,
            "the registry's TUF timestamp has no readable expiry",
            "ask the consortium: hubs and sites will refuse its metadata",
        )
    else:
        now = datetime.now(UTC)
        if now > expires:
            yield Finding(
                "clock",
                False,
                f"the registry's TUF timestamp expired at {expires:%Y-%m-%d %H:%M} UTC "
                f"and this machine's clock says {now:%Y-%m-%d %H:%M} UTC",
                "if the clock is right, the registry is not refreshing its metadata; if not, "
                "set the clock (NTP)",
            )


def _timestamp_expiry(document: bytes) -> datetime | None:
    """The ``signed.expires`` of TUF timestamp metadata (untrusted bytes), or None."""
    try:
        signed = json.loads(document).get("signed")
        expires = datetime.fromisoformat(str(signed.get("expires")).replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        return None
    return expires if expires.tzinfo is not None else None


def _superlink(settings: DoctorSettings) -> Iterator[Finding]:
    assert settings.superlink is not None
    host, _, port_text = settings.superlink.rpartition(":")
    if not host or not port_text.isdigit():
        yield Finding("SuperLink", False, f"{settings.superlink!r}", "give host:port")
        return
    if settings.ca is None:
        yield Finding("SuperLink", False, "no --ca given", "give the consortium's CA certificate")
        return
    try:
        context = ssl.create_default_context(cafile=str(settings.ca))
    except (OSError, ssl.SSLError) as exc:
        yield Finding("SuperLink", False, f"--ca {settings.ca}: {exc}", "give a PEM CA file")
        return
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port_text)), settings.timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls,
        ):
            certificate = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        yield Finding(
            "SuperLink",
            False,
            f"{settings.superlink}: the certificate does not verify ({exc.verify_message})",
            "use the consortium's ca.pem, and the host name its certificate was issued for; "
            "'certificate is not yet valid' or 'expired' may mean this machine's clock is wrong",
        )
        return
    except (OSError, ssl.SSLError) as exc:
        yield Finding(
            "SuperLink",
            False,
            f"{settings.superlink} unreachable ({exc})",
            f"check the address and that outbound TCP {port_text} is open in the firewall",
        )
        return
    until = str((certificate or {}).get("notAfter", "?"))
    yield Finding("SuperLink", True, f"{settings.superlink}: TLS verified (certificate to {until})")
    begins = (certificate or {}).get("notBefore")
    if isinstance(begins, str):
        start = datetime.fromtimestamp(ssl.cert_time_to_seconds(begins), UTC)
        skew = (start - datetime.now(UTC)).total_seconds()
        if skew > settings.clock_tolerance_s:
            yield Finding(
                "clock",
                False,
                f"this machine's clock is at least {skew:.0f} s behind the SuperLink "
                "certificate's start",
                "set the clock (NTP)",
            )


def _flower() -> Finding:
    beside = Path(sys.executable).parent / "flower-supernode"
    found = str(beside) if beside.is_file() else shutil.which("flower-supernode")
    if found is None:
        return Finding(
            "Flower", False, "flower-supernode not found", "install gsco with the [site] extra"
        )
    return Finding("Flower", True, found)


def _disk(where: Path, needed: int) -> Finding:
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        return Finding(
            "disk",
            False,
            f"{free / _GIB:.1f} GiB free at {probe}",
            f"free at least {needed / _GIB:.0f} GiB there (checkpoints, bundles, the model)",
        )
    return Finding("disk", True, f"{free / _GIB:.1f} GiB free at {probe}")


def _available_memory(read: Callable[[], str] | None = None) -> int | None:
    try:
        text = read() if read is not None else Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _memory(needed: int) -> Finding:
    available = _available_memory()
    if available is None:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        available = int(pages) * int(os.sysconf("SC_PAGE_SIZE")) if pages else None
    if available is None:
        return Finding("memory", True, "could not be measured here")
    if available < needed:
        return Finding(
            "memory",
            False,
            f"{available / _GIB:.1f} GiB available",
            f"training and adapter tuning need about {needed / _GIB:.0f} GiB: stop other jobs",
        )
    return Finding("memory", True, f"{available / _GIB:.1f} GiB available")
