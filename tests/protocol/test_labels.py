"""Labels and modalities are identifiers shown to clinicians: a strict character class.

A label reaches clinicians' screens, the generalist's prompt, the FHIR report
and the access log. Anything a terminal or a browser would interpret (control
characters, bidirectional overrides, zero-width characters, markup) is refused
by the schema, so the registry refuses the card; every label the schema
accepts makes a valid FHIR DiagnosticReport.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import pytest

from hub.web import diagnostic_report
from protocol import (
    LABEL_PUNCTUATION,
    DiagnoseResponse,
    Mode,
    SchemaError,
    SpecialistCard,
    StageTimings,
    TaskSpec,
)
from tests.conftest import card_dict

HOSTILE = {
    "escape": "normal\x1b[31m",
    "cr-lf": "normal\r\n",
    "nul": "nor\x00mal",
    "tab": "nor\tmal",
    "markup": "<script>alert(1)</script>",
    "angle": "a<b",
    "rtl-override": "normal\u202e",
    "zero-width-joiner": "nor\u200dmal",
    "zero-width-space": "nor\u200bmal",
    "bom": "\ufeffnormal",
    "no-break-space": "nor\u00a0mal",
    "line-separator": "nor\u2028mal",
    "private-use": "nor\ue000mal",
    "two-spaces": "normal  case",
    "leading-space": " normal",
    "trailing-space": "normal ",
    "not-nfc": "e\u0301tat",
    "starts-with-punctuation": "(benign)",
    "quote": 'say "normal"',
    "backslash": "a\\b",
    "ampersand-entity": "a&amp;b",
    "empty": "",
    "too-long": "x" * 81,
}
FINE = [
    "normal",
    "pneumonia",
    "Crohn's disease",
    "grade 2",
    "T2/T3",
    "β-thalassemia",
    "肺炎",
    "नमूना",  # combining vowel signs
    "état",
    "benign (cyst)",
    "50%",
    "ICD-10: J18.9",
]


def _task(labels: list[str]) -> dict[str, Any]:
    return {"task_id": "t", "modality": "chest X-ray", "labels": labels, "task_type": "multiclass"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_label_is_refused_by_every_schema(name: str) -> None:
    label = HOSTILE[name]
    with pytest.raises(SchemaError):
        TaskSpec.parse(_task(["ok", label]))
    card = card_dict(labels=["normal", label])
    with pytest.raises(SchemaError):
        SpecialistCard.parse(card)


@pytest.mark.parametrize("name", ["escape", "rtl-override", "markup", "cr-lf"])
def test_a_hostile_modality_is_refused(name: str) -> None:
    with pytest.raises(SchemaError):
        TaskSpec.parse({**_task(["a", "b"]), "modality": "chest " + HOSTILE[name]})


def test_labels_of_every_script_are_accepted() -> None:
    assert TaskSpec.parse(_task(FINE)).labels == tuple(FINE)


def _random_label(rng: random.Random) -> str:
    """A label drawn from the whole accepted class: letters of many scripts, marks, digits."""
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "αβγδεζηθλμπσφψω",
        "абвгдежзийклмн",
        "肺炎病毒正常",
        "नमसतेकखग",
        "\u0301\u0308",  # combining marks, never first
        LABEL_PUNCTUATION,
    ]
    first = rng.choice(pools[0] + pools[1] + pools[2] + pools[3])
    rest = []
    for _ in range(rng.randrange(0, 20)):
        pool = rng.choice([*pools, " "])
        char = rng.choice(pool)
        if char == " " and (not rest or rest[-1] == " "):
            continue
        rest.append(char)
    label = unicodedata.normalize("NFC", (first + "".join(rest)).strip())
    return label


def test_every_accepted_label_makes_a_valid_fhir_report() -> None:
    rng = random.Random(34)
    accepted = 0
    for _ in range(300):
        labels = [_random_label(rng), _random_label(rng)]
        if labels[0].casefold() == labels[1].casefold():
            continue
        try:
            task = TaskSpec.parse(_task(labels))
        except SchemaError:
            continue  # the generator strays outside the class now and then
        accepted += 1
        response = DiagnoseResponse(
            request_id="r1",
            task_id=task.task_id,
            label=task.labels[0],
            scores={task.labels[0]: 0.75, task.labels[1]: 0.25},
            mode_requested=Mode.ENSEMBLE,
            mode_used=Mode.ENSEMBLE,
            degraded=False,
            generalist_saw_image=False,
            moed=(),
            rad=(),
            specialists=(),
            warnings=("a warning with\x1b[0m a control character",),
            timings=StageTimings(decode_ms=1.0, specialists_ms=1.0, total_ms=2.0),
        )
        report = diagnostic_report(response, "0" * 64)  # validated against FHIR R4B inside
        assert report["conclusion"] == task.labels[0]
        assert "\x1b" not in str(report)
    assert accepted > 250
