"""A diagnosis as a FHIR ``DiagnosticReport`` (R4B models of ``fhir.resources``).

fhir.resources ships R5 by default and R4B (the R4 technical correction,
identical to R4 for ``DiagnosticReport``'s elements used here) as a package;
the report is validated against the R4B model before it is sent. Evidence and
provenance travel as extensions under ``urn:gsco:`` so a FHIR server keeps
them; a ``status`` of ``preliminary`` marks a machine suggestion that a
clinician has not signed off.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

from protocol import DiagnoseResponse

__all__ = ["FHIR_MEDIA_TYPE", "diagnostic_report"]

FHIR_MEDIA_TYPE = "application/fhir+json"
_SYSTEM = "urn:gsco:label"


def _printable(text: str) -> str:
    """``text`` with control and format characters replaced (FHIR strings refuse them).

    Labels, task and site ids cannot hold them (the card schema refuses
    them); warnings and the generalist's model name come from elsewhere.
    """
    return "".join(
        "\ufffd" if unicodedata.category(c)[0] == "C" and c not in "\t\n" else c for c in text
    )


def _ext(name: str, value: Any) -> dict[str, Any]:
    key = {bool: "valueBoolean", int: "valueInteger", float: "valueDecimal"}.get(
        type(value), "valueString"
    )
    return {"url": f"urn:gsco:{name}", key: _printable(value) if isinstance(value, str) else value}


def diagnostic_report(response: DiagnoseResponse, image_sha256: str) -> dict[str, Any]:
    """The response as a validated FHIR DiagnosticReport (a JSON-ready dict)."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    extensions = [
        _ext("mode-requested", response.mode_requested.value),
        _ext("mode-used", response.mode_used.value),
        _ext("degraded", response.degraded),
        _ext("image-sha256", image_sha256),
    ]
    if response.registry_snapshot_version is not None:
        extensions.append(_ext("registry-snapshot-version", response.registry_snapshot_version))
    if response.generalist is not None:
        extensions.append(_ext("generalist-model", response.generalist.model))
        extensions.append(_ext("generalist-saw-image", response.generalist.saw_image))
    extensions.extend(
        _ext(
            "specialist",
            f"{s.site_id}/{s.backbone}/v{s.version}/sha256:{s.bundle_digest}",
        )
        for s in response.specialists
    )
    if response.scores:
        extensions.append(_ext("scores", json.dumps(response.scores, sort_keys=True)))
    extensions.extend(_ext("warning", w) for w in response.warnings)
    report = DiagnosticReport.model_validate(
        {
            "resourceType": "DiagnosticReport",
            "id": response.request_id,
            "status": "preliminary",
            "code": {"text": f"GSCo diagnosis: {response.task_id}"},
            "issued": datetime.now(UTC).isoformat(),
            "conclusion": response.label,
            "conclusionCode": [
                {"coding": [{"system": _SYSTEM, "code": response.label}], "text": response.label}
            ],
            "extension": extensions,
        }
    )
    result: dict[str, Any] = json.loads(report.model_dump_json())
    return result
