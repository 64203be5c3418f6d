"""The ClientApp: messages routed by action; where a site's job comes from and how it
behaves fixed when the app is made (the deployed app: the node's own config, honest; a
simulation's: its jobs files, its attackers), never by what the SuperLink sends.

Fast: Flower's ``ClientApp`` is called directly with real ``Message`` objects
(the simulations in ``tests/simulations/test_simulate.py`` and the deployment in
``tests/federation`` run them under Flower's runtimes).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata

from fedapp import (
    JobError,
    NodeJobs,
    ScenarioJobs,
    SiteBehaviour,
    SiteJob,
    SiteOutcome,
    SiteStepError,
    training_options,
)
from fedapp.deployed import client_app as deployed_app
from simulations._apps import client_app
from simulations._faults import ScenarioBehaviour

JOB = SiteJob(
    site_id="hospital-01",
    home="/nonexistent/home",
    data="/nonexistent/hospital-01.npz",
    task_id="pneumonia-cxr",
    dataset="pneumoniamnist",
    registry="127.0.0.1:9",
    out_dir="/nonexistent/bundles/hospital-01",
)


def _message(message_type: str) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m-1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=message_type,
    )
    return Message(content=RecordDict({"ask": ConfigRecord({"x": 1})}), metadata=metadata)


def _context(tmp_path: Path, job: SiteJob = JOB) -> Context:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([job.to_json()]))
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0},
        state=RecordDict(),
        run_config={"jobs-file": str(jobs)},
    )


def test_the_site_answers_which_site_it_is(tmp_path: Path) -> None:
    reply = client_app(_message("query.site_id"), _context(tmp_path))
    assert reply.content["site"]["site-id"] == "hospital-01"


@pytest.mark.parametrize("message_type", ["query", "train", "evaluate", "query.publish"])
def test_an_action_the_site_does_not_have_is_refused(tmp_path: Path, message_type: str) -> None:
    with pytest.raises(ValueError, match="No .* function registered"):
        client_app(_message(message_type), _context(tmp_path))


def test_a_site_that_cannot_train_answers_with_its_reason(tmp_path: Path) -> None:
    reply = client_app(_message("train.specialist"), _context(tmp_path))
    outcome = SiteOutcome.from_json(str(reply.content["outcome"]["json"]))
    assert outcome.status == "failed"
    assert outcome.detail.startswith("SiteHomeError: no site identity")


def test_the_scenario_fixes_what_it_must_and_the_site_agent_chooses_the_rest() -> None:
    options = training_options(replace(JOB, epochs=3, batch_size=16, learning_rate=5e-4))
    given = (options.backbone, options.epochs, options.batch_size, options.learning_rate)
    assert given == ("tf_efficientnet_lite0", 3, 16, 5e-4)
    assert options.input_size == 64  # the backbone's default, as the scenario always trained
    assert (options.patience, options.flip, options.head) == (None, None, None)  # the recipe's
    assert (options.task, options.task_file) == ("pneumonia-cxr", None)
    assert options.dataset == "pneumoniamnist"  # the card names the share's source
    assert options.sign
    assert options.version is None  # the egress ledger decides the version
    assert options.out == Path(JOB.out_dir)

    shared = training_options(JOB, shared=True)
    assert shared.epochs == 0  # the FedAvg model is calibrated and indexed, not trained
    assert shared.out == Path(JOB.out_dir + "-fedavg")

    assert not training_options(JOB, sign=False).sign
    unsigned = replace(JOB, fault="unsigned")
    assert ScenarioBehaviour().signs(unsigned) is False  # a simulation's attacker
    assert SiteBehaviour().signs(unsigned) is True  # the deployed app: no fault to act out

    declared = training_options(replace(JOB, task={"task_id": "x"}, dataset=None))
    assert declared.task is None
    assert declared.task_file == Path("/nonexistent/hospital-01.task.json")


def test_a_deployed_site_takes_its_places_from_its_node_and_its_work_from_the_run(
    tmp_path: Path,
) -> None:
    from fedapp._client import deployed_job
    from site_agent import init_site

    home = init_site(tmp_path / "home", "st-marys").root
    node = {
        "home": str(home),
        "data": "/data/pneumonia.npz",
        "task": "pneumonia-cxr",
        "registry": "registry.example:50051",
        "work": str(tmp_path / "work"),
        "registry-ca": "/etc/gsco/registry-ca.pem",
    }
    run = {"task": "pneumonia-cxr", "backbone": "resnet18", "epochs": 2, "input-size": 28,
           "max-minutes": 0.0, "max-eval-images": 0}  # fmt: skip
    job = deployed_job(node, run, 7)
    assert job.site_id == "st-marys"  # from the site's own home, not from the run
    assert (job.backbone, job.epochs, job.input_size) == ("resnet18", 2, 28)
    assert job.max_minutes is None  # 0 in the run config: the recipe's budget
    assert job.max_eval_images is None
    assert job.registry_ca == "/etc/gsco/registry-ca.pem"
    assert job.out_dir == str(tmp_path / "work" / "run-7" / "pneumonia-cxr")
    assert job.fault is None

    with pytest.raises(JobError, match="trains for 'pneumonia-cxr'"):
        deployed_job(node, {**run, "task": "breast-us"}, 7)
    with pytest.raises(JobError, match="lacks data, registry"):
        deployed_job({k: v for k, v in node.items() if k not in ("data", "registry")}, run, 7)


def test_a_site_makes_the_fedavg_starting_weights_from_its_own_data(tmp_path: Path) -> None:
    # A deployed SuperLink has no data: it asks a site, and gets only untrained weights.
    import numpy as np

    from fedapp._fedavg import initial_state

    arrays = {
        f"{split}_{kind}": value
        for split in ("train", "val", "test")
        for kind, value in (
            ("images", np.zeros((4, 28, 28), dtype=np.uint8)),
            ("labels", np.array([[0], [1], [0], [1]])),
        )
    }
    data = tmp_path / "share.npz"
    np.savez(data, **arrays)
    job = replace(JOB, data=str(data), backbone="resnet18", input_size=28, seed=3)
    reply = client_app(_message("query.initial_state"), _context(tmp_path, job))
    received = reply.content.array_records["arrays"].to_torch_state_dict()
    made = initial_state(job)
    assert set(received) == set(made)
    assert all((received[k] == made[k]).all() for k in made)  # seeded: the same weights
    assert received["body.conv1.weight"].shape[1] == 1  # the site's grey images: one channel
    assert received["classifier.weight"].shape[0] == 2  # the task's two labels


def test_a_deployed_sites_failure_reaches_the_superlink_without_its_local_paths(
    tmp_path: Path,
) -> None:
    from fedapp._client import without_paths
    from site_agent import init_site

    home = init_site(tmp_path / "home", "st-marys").root
    secret = tmp_path / "radiology-archive" / "2026" / "pneumonia.npz"  # not there
    context = Context(
        run_id=3,
        node_id=7,
        node_config={
            "home": str(home),
            "data": str(secret),
            "task": "pneumonia-cxr",
            "registry": "127.0.0.1:9",
            "work": str(tmp_path / "work"),
        },
        state=RecordDict(),
        run_config={"task": "pneumonia-cxr", "backbone": "resnet18", "epochs": 1},
    )
    reply = deployed_app(_message("train.specialist"), context)
    outcome = SiteOutcome.from_json(str(reply.content["outcome"]["json"]))
    assert outcome.status == "failed"
    assert outcome.detail.startswith("DataNotFoundError")  # what went wrong still crosses
    assert "<local path>" in outcome.detail
    assert "radiology-archive" not in outcome.detail
    assert str(tmp_path) not in reply.content["outcome"]["json"]
    # Only paths: addresses, URLs and words stay.
    text = "registry 10.0.0.1:50051 refused; see https://example.org/a/b and /etc/x y/z"
    assert without_paths(text) == (
        "registry 10.0.0.1:50051 refused; see https://example.org/a/b and <local path> <local path>"
    )


def test_an_adapter_job_comes_from_the_simulation_or_from_the_hospitals_node_config(
    tmp_path: Path,
) -> None:
    """A simulated node reads its run's jobs file; a hospital's node only its own config."""
    from fedapp._tune_job import TuneJob

    job = TuneJob(
        site_id="hospital-01", home="/h", data="/d.npz", rows=(1, 2), task_id="pneumonia-cxr",
        registry="127.0.0.1:9", trusted_root="/r.json", model_dir="/m", base_model="smollm2",
        out_dir="/o", faults=("lie-policy",),
    )  # fmt: skip
    jobs = tmp_path / "tune-jobs.json"
    jobs.write_text(json.dumps([job.to_json()]))
    run_config = {"tune-jobs-file": str(jobs), "stage": "tune", "tune-rounds": 1}
    simulated = Context(
        run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(),
        run_config=run_config,
    )  # fmt: skip
    assert ScenarioJobs().tune_job(simulated) == job
    # A SuperLink naming a jobs file (one that makes the site an attacker) changes nothing
    # on a hospital's node: its job is its own config's, which here lacks two keys.
    hospital = Context(
        run_id=1, node_id=7, node_config={"home": "/h"}, state=RecordDict(),
        run_config=run_config,
    )  # fmt: skip
    with pytest.raises(JobError, match="--trusted-root, --generalist-model"):
        NodeJobs().tune_job(hospital)
    with pytest.raises(JobError, match="simulated nodes only"):
        ScenarioJobs().tune_job(hospital)


def test_a_superlink_cannot_turn_a_hospital_into_a_simulated_site(tmp_path: Path) -> None:
    # The deployed app never reads a jobs file: one sent in the run config, naming a site
    # that publishes unsigned, is ignored, and the node answers as itself.
    from site_agent import init_site

    home = init_site(tmp_path / "home", "st-marys").root
    evil = tmp_path / "jobs.json"
    evil.write_text(json.dumps([replace(JOB, fault="unsigned").to_json()]))
    context = Context(
        run_id=1, node_id=7, state=RecordDict(),
        node_config={
            "home": str(home), "data": "/d.npz", "task": "pneumonia-cxr",
            "registry": "127.0.0.1:9", "work": str(tmp_path / "work"), "partition-id": 0,
        },
        run_config={"jobs-file": str(evil), "task": "pneumonia-cxr"},
    )  # fmt: skip
    reply = deployed_app(_message("query.site_id"), context)
    assert reply.content["site"]["site-id"] == "st-marys"  # not the jobs file's hospital-01
    with pytest.raises(JobError, match="simulated nodes only"):
        client_app(_message("query.site_id"), context)  # nor would a simulation's app run here


def test_a_site_answers_a_bounded_number_of_policy_questions_about_its_cases(
    tmp_path: Path,
) -> None:
    """Sums and counts only, and no more questions than a fit needs: a SuperLink asking on
    and on could otherwise learn single cases from the differences of sums."""
    import numpy as np

    from fedapp._tune_job import MAX_POLICY_QUESTIONS, TuneJob, policy_answer

    job = TuneJob(
        site_id="hospital-01", home="/h", data="/d.npz", rows=(), task_id="pneumonia-cxr",
        registry="127.0.0.1:9", trusted_root="/r.json", model_dir="/m", base_model="smollm2",
        out_dir="/o", scratch=str(tmp_path / "scratch"),
    )  # fmt: skip
    with pytest.raises(SiteStepError, match="no policy evidence"):
        policy_answer(job, {"what": "counts"})
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(2), 30)
    job.folder.mkdir(parents=True)
    np.savez(
        job.folder / "policy-evidence-pneumonia-cxr.npz",
        ensemble=probabilities,
        truth=rng.integers(0, 2, 30),
        **{"generalist-gsco": probabilities[:, ::-1]},
    )
    for _ in range(MAX_POLICY_QUESTIONS):
        answer = policy_answer(job, {"what": "counts"})
    assert answer["n"] == 30
    assert sum(answer["labels"]) == 30
    with pytest.raises(SiteStepError, match="policy questions"):
        policy_answer(job, {"what": "counts"})


def test_a_deployed_sites_adapter_failure_leaves_without_its_local_paths(tmp_path: Path) -> None:
    """The SuperLink gets the error's type and message, each local path replaced."""
    home = tmp_path / "secret-ward" / "home"
    deployed = Context(
        run_id=1, node_id=7, state=RecordDict(),
        node_config={
            "home": str(home), "data": str(tmp_path / "share.npz"), "task": "pneumonia-cxr",
            "registry": "127.0.0.1:9", "work": str(tmp_path / "work"),
            "trusted-root": str(tmp_path / "1.root.json"), "generalist-model": str(tmp_path),
        },
        run_config={"jobs-file": "", "tune-jobs-file": "", "tune-rounds": 1},
    )  # fmt: skip
    import numpy as np

    np.savez(tmp_path / "share.npz", val_labels=np.zeros((20, 1), dtype=np.int64))
    with pytest.raises(RuntimeError) as raised:
        deployed_app(_message("query.adapter_examples"), deployed)
    assert str(raised.value).startswith("SiteHomeError: ")
    assert "<local path>" in str(raised.value)
    assert "secret-ward" not in str(raised.value)
