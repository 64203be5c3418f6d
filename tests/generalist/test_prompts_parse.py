"""Prompts, the free-text parser, logprob scores and the MedDr request (no server needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from generalist import (
    PROMPTS,
    ArbitrationRequest,
    MoedEvidence,
    OpenAICompatibleBackend,
    RadEvidence,
    label_scores,
    meddr_backend_config,
    meddr_serve_command,
    parse_answer,
    render_prompt,
)
from protocol import Mode, TaskSpec, TaskType
from site_agent.data import default_catalog

PNEUMONIA = default_catalog().get("pneumonia-cxr").task
BREAST = default_catalog().get("breast-us").task
FINDINGS = TaskSpec(
    task_id="cxr-findings",
    modality="chest X-ray",
    labels=("effusion", "cardiomegaly", "nodule"),
    task_type=TaskType.MULTILABEL,
)


def test_gsco_prompt_is_the_papers() -> None:
    prompt = render_prompt(
        PNEUMONIA,
        Mode.GSCO,
        moed=[MoedEvidence("pneumonia", 0.81), MoedEvidence("normal", 0.64)],
        rad=[RadEvidence("pneumonia", 0.93), RadEvidence("normal", 0.88)],
    )
    assert prompt.startswith(
        "Your task is disease diagnosis. You are given a chest X-ray image. "
        "The possible options are: normal, pneumonia. "
        "The diagnoses of the most similar cases are pneumonia (similarity 0.93), "
        "normal (similarity 0.88). "
        "The reference answers by other models are pneumonia (0.81), normal (0.64)."
    )
    assert "not available to you" not in prompt


@pytest.mark.parametrize(
    ("mode", "has_rad", "has_moed"),
    [
        (Mode.GSCO, True, True),
        (Mode.MOED, False, True),
        (Mode.RAD, True, False),
        (Mode.GENERALIST, False, False),
    ],
)
def test_variants_carry_their_evidence_only(mode: Mode, has_rad: bool, has_moed: bool) -> None:
    prompt = render_prompt(
        BREAST,
        mode,
        [MoedEvidence("malignant", 0.7)],
        [RadEvidence("malignant", 0.9)],
        sees_image=False,
    )
    assert ("most similar cases" in prompt) is has_rad
    assert ("other models" in prompt) is has_moed
    assert "not available to you" in prompt
    assert mode in PROMPTS


def test_voting_does_not_ask_the_generalist() -> None:
    with pytest.raises(ValueError, match="does not ask"):
        render_prompt(PNEUMONIA, Mode.VOTING)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pneumonia", "pneumonia"),
        ("Pneumonia", "pneumonia"),
        ("  NORMAL.  ", "normal"),
        ('"pneumonia"\n', "pneumonia"),
        ("The answer is: pneumonia.", "pneumonia"),
        ("Findings suggest consolidation in the right lower lobe.", "pneumonia"),
        ("healthy", "normal"),
    ],
)
def test_single_label_answers(text: str, expected: str) -> None:
    assert parse_answer(text, PNEUMONIA).label == expected


def test_longest_label_wins_over_its_prefix() -> None:
    assert parse_answer("Normal or benign.", BREAST).label == "normal or benign"
    assert parse_answer("This looks benign to me", BREAST).label == "normal or benign"
    assert parse_answer("likely a carcinoma", BREAST).label == "malignant"


def test_multilabel_answer() -> None:
    parsed = parse_answer("Cardiomegaly, and a small effusion.", FINDINGS)
    assert parsed.labels == ("effusion", "cardiomegaly")
    assert parsed.label is None


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, I cannot determine the diagnosis from this image.",
        "As an AI, I am unable to provide a diagnosis. Please consult a doctor.",
        "It is not possible to determine this.",
    ],
)
def test_refusals(text: str) -> None:
    parsed = parse_answer(text, PNEUMONIA)
    assert parsed.refused
    assert parsed.label is None


def test_nothing_recognisable() -> None:
    assert parse_answer("The weather is nice.", PNEUMONIA).labels == ()


def _position(token: str, alternatives: dict[str, float]) -> dict[str, object]:
    return {
        "token": token,
        "logprob": math.log(alternatives[token]),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()],
    }


def test_label_scores_from_the_first_diverging_token() -> None:
    positions = [
        _position("pne", {"pne": 0.7, "normal": 0.25, "the": 0.05}),
        _position("umonia", {"umonia": 1.0}),
    ]
    scores = label_scores(positions, ("normal", "pneumonia"))
    assert scores is not None
    assert scores["pneumonia"] == pytest.approx(0.7 / 0.95)
    assert sum(scores.values()) == pytest.approx(1.0)


def test_label_scores_skip_a_shared_prefix() -> None:
    labels = ("grade 0", "grade 1", "grade 2")
    positions = [
        _position("grade", {"grade": 1.0}),
        _position(" 1", {" 1": 0.6, " 2": 0.3, " 0": 0.1}),
    ]
    scores = label_scores(positions, labels)
    assert scores == pytest.approx({"grade 0": 0.1, "grade 1": 0.6, "grade 2": 0.3})


def test_no_logprobs_no_scores() -> None:
    assert label_scores([], ("a", "b")) is None


def test_meddr_request_and_command() -> None:
    backend = OpenAICompatibleBackend(meddr_backend_config("http://gpu-node:8000/v1"))
    payload, prompt = backend.build_payload(
        ArbitrationRequest(PNEUMONIA, Mode.GSCO, (MoedEvidence("pneumonia", 0.9),), (), b"\x89PNG")
    )
    assert payload["model"] == "meddr"
    assert payload["structured_outputs"] == {"choice": ["normal", "pneumonia"]}
    assert "guided_choice" not in payload  # ignored silently by vLLM >= 0.12
    parts = payload["messages"][1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,iVBO")
    assert parts[1]["text"] == prompt
    assert "not available to you" not in prompt
    command = meddr_serve_command("/models/MedDr_0401", gpus=4)
    assert command[command.index("--tensor-parallel-size") + 1] == "4"
    assert "--trust-remote-code" in command
    assert "max_dynamic_patch" in command[command.index("--hf-overrides") + 1]
    assert "--enable-lora" in command  # the hub hot-loads the consortium's adapters
    assert command[command.index("--max-lora-rank") + 1] == "16"


def test_text_only_backend_does_not_send_the_image() -> None:
    from generalist import OpenAIConfig

    backend = OpenAICompatibleBackend(OpenAIConfig("http://127.0.0.1:1/v1", "smollm2"))
    payload, prompt = backend.build_payload(ArbitrationRequest(PNEUMONIA, image_png=b"\x89PNG"))
    assert [part["type"] for part in payload["messages"][1]["content"]] == ["text"]
    assert "not available to you" in prompt


def test_the_meddr_recipe_writes_the_template_its_command_names(tmp_path: Path) -> None:
    import json
    import shlex

    from jinja2 import Environment

    from generalist import MEDDR_TEMPLATE_FILE, write_meddr_recipe

    template, script, settings = write_meddr_recipe(tmp_path / "meddr", "/models/MedDr", gpus=2)
    assert template.name == MEDDR_TEMPLATE_FILE
    lines = script.read_text().splitlines()
    assert "export VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in lines
    command = shlex.split(lines[-1].removeprefix("exec "))
    assert command[command.index("--chat-template") + 1] == str(template.resolve())
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--chat-template-content-format") + 1] == "openai"
    render = Environment(autoescape=False).from_string(template.read_text()).render
    question = [{"type": "image"}, {"type": "text", "text": "Which label?"}]
    # What InternVL's Conversation("Hermes-2").get_prompt() builds (SeparatorStyle.MPT: no
    # newline between turns), the image first as model.chat puts it; vLLM hands image parts
    # to the template as {"type": "image"}, and "image_url" renders the same.
    for image in ({"type": "image"}, {"type": "image_url", "image_url": {"url": "data:"}}):
        rendered = render(
            messages=[
                {"role": "system", "content": "You are a radiologist."},
                {"role": "user", "content": [image, question[1]]},
            ],
            add_generation_prompt=True,
        )
        assert rendered == (
            "<|im_start|>system\nYou are a radiologist.<|im_end|>"
            "<|im_start|>user\n<image>\nWhich label?<|im_end|><|im_start|>assistant\n"
        )
    # No system message: Hermes-2's own.
    assert render(messages=[{"role": "user", "content": question}]) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nWhich label?<|im_end|>"
    )
    assert json.loads(settings.read_text())["lora_module_root"] == "language_model.model"
    assert json.loads(settings.read_text())["model"] == "meddr"
    with pytest.raises(ValueError, match="at least one GPU"):
        write_meddr_recipe(tmp_path / "none", "/models/MedDr", gpus=0)
