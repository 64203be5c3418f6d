"""The report folder: ``results.json``, ``report.md`` and PNG plots.

Plots (matplotlib, Agg backend): the method comparison with 95% confidence
intervals, per-site accuracy, confusion matrices per method, and reliability
diagrams (calibration) for the methods that give scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedapp._evaluate import HUB_MODES, Evaluation
from protocol import TaskType, decide
from simulations._metrics import MethodScore, score_method

__all__ = ["Report", "build_report", "write_report"]

Report = dict[str, Any]


def _score_dict(score: MethodScore) -> dict[str, Any]:
    return asdict(score)


def build_report(result: Any) -> Report:
    """The report's data (``results.json``) from a :class:`SimulationResult`."""
    from simulations._run import scenario_dict

    evaluation: Evaluation | None = result.evaluation
    k = len(result.labels)
    task_type: TaskType = result.task_type
    ordinal = task_type is TaskType.ORDINAL

    def score(
        method: str, truth: NDArray[np.int64], predicted: NDArray[np.int64], probs: Any
    ) -> MethodScore:
        return score_method(method, truth, predicted, probs, k, ordinal=ordinal)

    methods: list[MethodScore] = []
    site_scores: list[MethodScore] = []
    effects: dict[str, Any] = {}
    if evaluation is not None:
        site_scores = [
            score(site, evaluation.truth, decide(probs, task_type), probs)
            for site, probs in sorted(evaluation.site_probs.items())
        ]
        methods = _methods_scored(evaluation, site_scores, score, task_type)
        effects = _fault_effects(result, evaluation, methods, site_scores, score, task_type)
    return {
        "schema_version": 1,
        "scenario": scenario_dict(result.scenario),
        "task_id": result.task_id,
        "labels": list(result.labels),
        "task_type": task_type.value,
        "test_images": len(evaluation.truth) if evaluation else 0,
        "sites": [
            {
                **asdict(o),
                "name": _name(o),
                "partition_class_counts": result.partition_counts.get(o.site_id),
                "served_by_hub": _name(o) in result.hub_sites,
            }
            for o in result.sites
        ],
        "partition_images_moved": result.partition_moved,
        "hub": {"sites_served": result.hub_sites, "refused": result.hub_refused},
        "methods": [_score_dict(m) for m in methods],
        "per_site": [_score_dict(s) for s in site_scores],
        "degraded_answers": evaluation.degraded if evaluation else {},
        "generalist_saw_image": {
            "answers": evaluation.generalist_answers if evaluation else 0,
            "with_image": evaluation.generalist_saw_image if evaluation else 0,
        },
        "overturned_ensemble": evaluation.overturned if evaluation else {},
        "arbitration_policy": (
            result.policy.model_dump(mode="json") if result.policy is not None else None
        ),
        "adapter": getattr(result, "adapter", None),
        "fault_effects": effects,
        "constant_answers": {}
        if evaluation is None
        else {
            mode: result.labels[int(predicted[0])]
            for mode, predicted in evaluation.predicted.items()
            if len(predicted) > 1
            and len(set(predicted.tolist())) == 1
            and evaluation.degraded.get(mode, 0) == 0
            and mode in ("moed", "rad", "generalist", "gsco", "gsco (zero-shot)")
        },
        "federation_privacy": _federation_privacy(result),
        "timings_s": result.timings_s,
        "confusion": {}
        if evaluation is None
        else {
            name: _confusion(evaluation.truth, predicted, k).tolist()
            for name, predicted in evaluation.predicted.items()
        },
    }


_Score = Callable[[str, NDArray[np.int64], NDArray[np.int64], Any], MethodScore]


def _methods_scored(
    evaluation: Evaluation,
    site_scores: list[MethodScore],
    score: _Score,
    task_type: TaskType,
) -> list[MethodScore]:
    """The rows of the comparison: the best site (oracle), the shared model, every mode."""
    truth = evaluation.truth
    methods: list[MethodScore] = []
    if site_scores:
        local = [s for s in site_scores if not s.method.endswith("(fedavg)")] or site_scores
        best = max(local, key=lambda s: s.accuracy.value)
        probs = evaluation.site_probs[best.method]
        methods.append(
            score(
                # Chosen on the very images it is scored on: an upper bound, not a
                # method a consortium could run (it would not know which one is best).
                f"best single specialist, oracle ({best.method})",
                truth,
                decide(probs, task_type),
                probs,
            )
        )
    shared = sorted(name for name in evaluation.site_probs if name.endswith("(fedavg)"))
    if shared:
        probs = evaluation.site_probs[shared[0]]
        methods.append(
            score(
                f"fedavg shared specialist ({shared[0]})",
                truth,
                decide(probs, task_type),
                probs,
            )
        )
    names = [m.value for m in HUB_MODES]
    # The ablation of the hub's default: what the generalist generated, its calibrated
    # answer, and the answer with the fitted policy (the "gsco" row itself).
    names[names.index("gsco") : names.index("gsco")] = [
        "gsco (zero-shot)",
        "gsco (calibrated)",
        "gsco (adapter)",
    ]
    for mode in ("moed", "rad"):  # when the adapter learnt their prompts too
        if f"{mode} (adapter)" in evaluation.predicted:
            names.insert(names.index(mode) + 1, f"{mode} (adapter)")
    for name in names:
        if name in evaluation.predicted:
            methods.append(
                score(name, truth, evaluation.predicted[name], evaluation.scores.get(name))
            )
    return methods


def _fault_effects(
    result: Any,
    evaluation: Evaluation,
    methods: list[MethodScore],
    site_scores: list[MethodScore],
    score: _Score,
    task_type: TaskType,
) -> dict[str, Any]:
    """What each label-flipping site did to the ensemble and the vote: with it and without."""
    effects: dict[str, Any] = {}
    truth = evaluation.truth
    bad = [o.site_id for o in result.sites if o.fault == "flip-labels"]
    for site in bad:
        if site not in evaluation.site_probs or len(evaluation.site_probs) < 2:
            continue
        mean, voted = evaluation.without(site)
        with_site = {m.method: m for m in methods}
        without = {
            "ensemble": score("ensemble", truth, decide(mean, task_type), mean),
            "voting": score("voting", truth, voted, None),
        }
        effects[site] = {
            "fault": "flip-labels",
            "site_alone_accuracy": next(s.accuracy.value for s in site_scores if s.method == site),
            "accuracy_with_site": {
                name: with_site[name].accuracy.value for name in without if name in with_site
            },
            "accuracy_without_site": {
                name: score.accuracy.value for name, score in without.items()
            },
        }
    return effects


def _federation_privacy(result: Any) -> str | None:
    """The privacy budget the published shared specialists' cards record, if any.

    It is the same :func:`federation_card` computation the ServerApp wrote into
    those cards, from the scenario's rounds, noise and delta.
    """
    from fedapp._fedavg import federation_card

    scenario = result.scenario
    shared = any(o.federated and o.status == "published" for o in result.sites)
    if not shared or scenario.dp_noise_multiplier <= 0:
        return None
    dp = federation_card(
        scenario.fedavg_rounds,
        scenario.sites,
        scenario.fedavg_local_epochs,
        scenario.dp_noise_multiplier,
        scenario.dp_clipping_norm,
        scenario.dp_delta,
    ).differential_privacy
    assert dp is not None
    return f"epsilon {dp.epsilon:.2f} at delta {dp.delta:g} ({dp.accountant})"


def _name(outcome: Any) -> str:
    return str(outcome.site_id) + (" (fedavg)" if outcome.federated else "")


def _confusion(truth: NDArray[np.int64], predicted: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def _interval(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def _markdown(report: Report, plots: list[str]) -> str:
    lines = [
        *_overview(report),
        *_methods(report),
        *_policy(report),
        *_adapter(report),
        *_remarks(report),
        *_sites(report),
        *_faults(report),
        *_plot_links(plots),
        "",
    ]
    return "\n".join(lines)


def _overview(report: Report) -> list[str]:
    """The title and what was simulated."""
    scenario = report["scenario"]
    return [
        "# GSCo simulation report",
        "",
        f"- Dataset: {scenario['dataset']} (task `{report['task_id']}`, labels "
        f"{', '.join(report['labels'])})",
        f"- Sites: {scenario['sites']}, partition `{scenario['partition']}`, backbone "
        f"`{scenario['backbone']}`, {scenario['epochs']} epochs / "
        f"{scenario['max_minutes_per_site']} min per site",
        *(
            [
                f"- Federated: the sites also co-trained one shared specialist with FedAvg, "
                f"{scenario['fedavg_rounds']} rounds of {scenario['fedavg_local_epochs']} local "
                f"epoch(s)"
                + (
                    f", DP noise multiplier {scenario['dp_noise_multiplier']}, clipping norm "
                    f"{scenario['dp_clipping_norm']}: {report['federation_privacy']}"
                    if scenario["dp_noise_multiplier"]
                    else ""
                )
            ]
            if scenario["fedavg_rounds"]
            else []
        ),
        f"- Generalist: {scenario['generalist']}"
        + (" (unreachable during the evaluation)" if scenario["generalist_down"] else "")
        + _saw_image(report),
        f"- Test images evaluated through the hub: {report['test_images']}",
        "- Wall time per stage (s): "
        + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()),
    ]


def _saw_image(report: Report) -> str:
    """Whether the generalist saw the images: the paper's point, which a text model cannot show."""
    seen = report.get("generalist_saw_image") or {}
    answers, with_image = int(seen.get("answers", 0)), int(seen.get("with_image", 0))
    if not answers:
        return ""
    if with_image == answers:
        return f"; it saw the image in all {answers} of its answers"
    if with_image == 0:
        return f"; text only: it saw no image in its {answers} answers"
    return f"; it saw the image in {with_image} of its {answers} answers"


def _methods(report: Report) -> list[str]:
    """Every method's scores with their intervals, and what answered the same for every image."""
    ordinal = report.get("task_type") == TaskType.ORDINAL.value
    lines = [
        "",
        "## Method comparison (95% bootstrap confidence intervals)",
        "",
        "| method | ACC | macro-AUC | macro-F1 |"
        + (" QWK | MAE (grades) |" if ordinal else "")
        + " degraded answers |",
        "| --- | --- | --- | --- |" + (" --- | --- |" if ordinal else "") + " --- |",
    ]
    for method in report["methods"]:
        degraded = report["degraded_answers"].get(method["method"], "")
        grades = (
            f" {_interval(method['quadratic_weighted_kappa'])} | "
            f"{_interval(method['mean_absolute_error'])} |"
            if ordinal
            else ""
        )
        lines.append(
            f"| {method['method']} | {_interval(method['accuracy'])} | "
            f"{_interval(method['macro_auc'])} | {_interval(method['macro_f1'])} |{grades} "
            f"{degraded} |"
        )
    constant = report.get("constant_answers") or {}
    if constant:
        lines += [
            "",
            "Note: "
            + ", ".join(f"`{mode}` answered `{label}`" for mode, label in constant.items())
            + " for every image. A label the generalist generates whatever the evidence is its "
            "label bias (the CPU stand-in, SmolLM2-135M, text only, has a strong one): the "
            "calibrated and policy rows show what the hub makes of its label scores instead.",
        ]
    return lines


def _policy(report: Report) -> list[str]:
    """The arbitration policy the hub's operator fitted, mode by mode."""
    lines: list[str] = []
    policy = report.get("arbitration_policy")
    if policy:
        lines += [
            "",
            f"The arbitration policy was fitted on {policy['n_examples']} validation images "
            "(never on test): each generalist mode's calibrated scores `q` (contextual "
            "calibration, then a per-label log bias `b` fitted class-balanced on the same cases) "
            "weigh `w x log q` against the specialists' answer `log p`, its *base*: their vote "
            "(scored `(votes + mean) / (n + 1)`), or their mean probabilities (`ensemble`) where "
            "those were right on more validation cases than the vote. `w = 0` is the base "
            "itself; a weight is trusted only when it beats the base beyond chance (McNemar, "
            "p <= 0.05). Once the policy is in service, the `MODE (calibrated)` rows include "
            "the bias.",
            "",
            "| mode | generalist | base | label bias b | weight w (p) | validation ACC: ensemble "
            "| voting | generalist (calibrated) | (+ bias) | policy |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for mode, fitted in policy["modes"].items():
            accuracy = fitted["validation_accuracy"]
            bias = fitted.get("label_bias")
            biased = accuracy.get("generalist (calibrated+bias)")
            gate = fitted.get("gate_p_value")
            voting = accuracy.get("voting")
            lines.append(
                f"| {mode} | `{fitted.get('model') or policy['model']}` | "
                f"{fitted.get('base', 'ensemble')} | "
                + (", ".join(f"{b:+.2f}" for b in bias) if bias else "-")
                + f" | {fitted['generalist_weight']:g}"
                + (f" ({gate:.3g})" if gate is not None else "")
                + f" | {accuracy['ensemble']:.3f} | "
                + (f"{voting:.3f}" if voting is not None else "-")
                + f" | {accuracy['generalist (calibrated)']:.3f} | "
                + (f"{biased:.3f}" if biased is not None else "-")
                + f" | {accuracy['policy']:.3f} |"
            )
    return lines


def _adapter(report: Report) -> list[str]:
    """The adapter the sites tuned, co-signed and published, and its policy."""
    lines: list[str] = []
    adapter = report.get("adapter")
    if adapter:
        lines += ["", "## The generalist's evidence-tuned adapter", ""]
        if adapter.get("digest"):
            card = adapter["card"]
            training = card["training"]
            lines += [
                f"A LoRA adapter (rank {card['lora']['rank']}, "
                f"{', '.join(card['lora']['target_modules'])}, "
                f"{len(card['lora']['layers']) or 'all'} layers) was tuned over "
                f"{len(training['sites'])} sites with {training.get('strategy', 'fedavg')} "
                f"(every update screened and clipped; {training['rounds']} rounds of "
                f"{training['local_epochs']} local epoch(s), "
                f"{training['examples']} evidence examples: "
                + ", ".join(f"{k} {v}" for k, v in training["examples_per_site"].items())
                + f") in {adapter.get('tuning_seconds', '?')} s, signed by "
                f"{card['site_id']} (bundle `{adapter['digest'][:16]}`, version "
                f"{card['version']} of the consortium's adapter for the task), co-signed by "
                + ", ".join(adapter.get("co_signed_by") or ["?"])
                + f", verified by the hub and "
                f"loaded into vLLM as `{adapter['name']}`. It learnt the prompts of "
                + ", ".join(f"`{m}`" for m in training["prompt_modes"])
                + ": their `MODE (adapter)` rows are its calibrated answers, and their own "
                "rows the hub's answers with it and the weight fitted for it. The other modes "
                "are answered by the base model.",
                "",
                f"Evidence split: {training['evidence_split']}.",
            ]
            fitted = adapter.get("policy")
            if card.get("policy") and isinstance(fitted, dict):
                excluded = fitted.get("sites_excluded") or {}
                lines += [
                    "",
                    f"Its arbitration policy was fitted at the {adapter.get('policy_sites')} "
                    f"sites, as deployed hospitals fit it: each scored its own share of "
                    f"{fitted.get('n_examples')} validation cases it was not tuned on with its "
                    "copy of the tuned generalist, and only sums and counts left the sites "
                    f"({adapter.get('policy_questions')} questions), each answer checked "
                    "before it counted"
                    + (
                        " (excluded: "
                        + "; ".join(f"{site}: {why}" for site, why in excluded.items())
                        + ")"
                        if excluded
                        else ""
                    )
                    + f". It is in the card of version {card['version']}, co-signed with the "
                    "adapter; the hub applies it and shows it in `/v1/tasks`.",
                ]
            elif adapter.get("policy_set_by_operator") or adapter.get("policy_error"):
                lines += [
                    "",
                    "The sites could not fit the adapter's policy"
                    + (f" ({adapter['policy_error']})" if adapter.get("policy_error") else "")
                    + "; the hub operator fitted it through the hub and put it in service.",
                ]
        else:
            lines.append(
                "Adapter tuning did not give an adapter in service: "
                + str(adapter.get("not_served") or adapter.get("error") or "unknown")
            )
    return lines


def _remarks(report: Report) -> list[str]:
    """How often the generalist changed the answer, and how to read the oracle row."""
    lines: list[str] = []
    overturned = report.get("overturned_ensemble") or {}
    if overturned:
        lines += [
            "",
            "How often each mode's answer differed from the ensemble's (the generalist "
            "overturned it, or the policy's base is the vote and the vote differed), and was "
            "right: "
            + "; ".join(
                f"`{mode}` {o['overturned']} times, right {o['right']}"
                for mode, o in overturned.items()
            )
            + ".",
        ]
    if any(m["method"].startswith("best single specialist, oracle") for m in report["methods"]):
        lines += [
            "",
            "The *oracle* row is the specialist that scored best on these same test images: "
            "an upper bound for choosing one site's model, not a method (chosen on test).",
        ]
    return lines


def _sites(report: Report) -> list[str]:
    """What each site trained on, and what became of its specialist."""
    lines: list[str] = []
    lines += [
        "",
        "AUC needs scores: `voting` scores are vote shares; the generalist modes score from the "
        "generalist's token log-probabilities, and have none when the server returns none.",
        "",
        "## Sites",
        "",
        "| site | training images (per class) | fault | outcome | served by hub | ACC alone |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    alone = {s["method"]: s for s in report["per_site"]}
    for site in report["sites"]:
        accuracy = alone.get(site["name"])
        lines.append(
            f"| {site['name']} | {site['n_train']} ({site['partition_class_counts']}) | "
            f"{site['fault'] or '-'} | {site['status']}: {site['detail'][:80]} | "
            f"{'yes' if site['served_by_hub'] else 'no'} | "
            f"{_interval(accuracy['accuracy']) if accuracy else '-'} |"
        )
    return lines


def _faults(report: Report) -> list[str]:
    """Each attacker or failure, and what the network did about it."""
    lines: list[str] = []
    adapter = report.get("adapter")
    faults = [s for s in report["sites"] if s["fault"] and not s["federated"]]
    refused = (adapter or {}).get("refused") or {}
    if faults or refused or report["scenario"]["generalist_down"]:
        lines += ["", "## Faults and attacks", ""]
        attackers = report["scenario"].get("adapter_faults") or {}
        for site_id, what in sorted(refused.items()):
            number = site_id.rsplit("-", 1)[-1].lstrip("0")
            kinds = attackers.get(number) or attackers.get(site_id) or []
            lines.append(
                f"- **{site_id}**"
                + (f" ({', '.join(kinds)})" if kinds else "")
                + ": detected and refused in the adapter stage: "
                + "; ".join(what)
                + "."
            )
        if refused and adapter and adapter.get("digest"):
            lines.append(
                "  The hub serves the consortium's adapter "
                f"(`{adapter['digest'][:16]}`, co-signed by "
                + ", ".join(adapter.get("co_signed_by") or [])
                + ")."
            )
        for site in faults:
            lines.append(f"- **{site['site_id']}** ({site['fault']}): {site['status']}. ")
            if site["fault"] in ("tamper", "unsigned"):
                lines[-1] += (
                    "The registry refused it, and the hub never served it."
                    if site["status"] == "rejected" and not site["served_by_hub"]
                    else "WARNING: it was not refused as it should have been."
                )
            if site["fault"] == "drop-out":
                lines[-1] += "The others went on without it."
            effect = report["fault_effects"].get(site["site_id"])
            if effect:
                lines[-1] += (
                    f"Its specialist alone: ACC {effect['site_alone_accuracy']:.3f}. "
                    + "; ".join(
                        f"{name} ACC {effect['accuracy_with_site'].get(name, float('nan')):.3f} "
                        f"with it, {effect['accuracy_without_site'][name]:.3f} without it"
                        for name in effect["accuracy_without_site"]
                    )
                    + "."
                )
        if report["scenario"]["generalist_down"]:
            lines.append(
                "- **Generalist down**: every generalist-mode answer fell back to the ensemble "
                "and is counted under 'degraded answers'."
            )
    return lines


def _plot_links(plots: list[str]) -> list[str]:
    lines: list[str] = []
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return lines


def _plots(report: Report, evaluation: Evaluation | None, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    methods = report["methods"]
    if methods:
        fig, ax = plt.subplots(figsize=(9, 4))
        names = [m["method"] for m in methods]
        values = [m["accuracy"]["value"] for m in methods]
        errors = [
            [m["accuracy"]["value"] - m["accuracy"]["low"] for m in methods],
            [m["accuracy"]["high"] - m["accuracy"]["value"] for m in methods],
        ]
        ax.bar(range(len(names)), values, yerr=errors, capsize=4, color="#4477aa")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(0, 1)
        ax.set_title("Methods on the test split")
        fig.tight_layout()
        fig.savefig(out / "methods.png", dpi=110)
        plt.close(fig)
        written.append("methods.png")
    if report["per_site"]:
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(report["per_site"]) + 2), 3.5))
        names = [s["method"] for s in report["per_site"]]
        ax.bar(range(len(names)), [s["accuracy"]["value"] for s in report["per_site"]])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy alone")
        ax.set_title("Each site's specialist")
        fig.tight_layout()
        fig.savefig(out / "sites.png", dpi=110)
        plt.close(fig)
        written.append("sites.png")
    confusion = report["confusion"]
    if confusion:
        fig, axes = plt.subplots(1, len(confusion), figsize=(2.6 * len(confusion), 2.8))
        for ax, (name, matrix) in zip(np.atleast_1d(axes), confusion.items(), strict=True):
            ax.imshow(np.asarray(matrix), cmap="Blues")
            for (i, j), value in np.ndenumerate(np.asarray(matrix)):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("predicted", fontsize=7)
            ax.set_ylabel("true", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=110)
        plt.close(fig)
        written.append("confusion.png")
    if evaluation is not None:
        scored = {n: s for n, s in evaluation.scores.items() if s is not None}
        if scored:
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
            for name, scores in scored.items():
                confidence = scores.max(axis=1)
                correct = scores.argmax(axis=1) == evaluation.truth
                bins = np.linspace(0, 1, 11)
                which = np.clip(np.digitize(confidence, bins) - 1, 0, 9)
                xs, ys = [], []
                for b in range(10):
                    mask = which == b
                    if mask.sum() >= 3:
                        xs.append(float(confidence[mask].mean()))
                        ys.append(float(correct[mask].mean()))
                ax.plot(xs, ys, marker="o", label=name)
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_title("Calibration")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / "calibration.png", dpi=110)
            plt.close(fig)
            written.append("calibration.png")
    return written


def write_report(result: Any, out: Path) -> Report:
    """Writes ``results.json``, ``report.md`` and the plots into ``out``; returns the data."""
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(result)
    plots = _plots(report, result.evaluation, out)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report, plots))
    return report
