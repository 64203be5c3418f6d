"""The shared specialist of federated training: its starting weights and its card entry."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedapp._site_job import SiteJob
from protocol import DifferentialPrivacy, FederatedTraining

__all__ = ["federation_card", "initial_state"]


def initial_state(job: SiteJob) -> dict[str, torch.Tensor]:
    """The weights every site starts FedAvg from (the backbone's own, seeded)."""
    from site_agent.train import WeightsPolicy, build_specialist, default_zoo

    with np.load(job.data, allow_pickle=False) as archive:
        images = archive["train_images"]
    channels = 1 if images.ndim == 3 else int(images.shape[-1])
    spec = default_zoo().get(job.backbone)
    labels = job.task_spec().labels
    torch.manual_seed(job.seed)
    net, _, _ = build_specialist(
        spec,
        len(labels),
        channels,
        job.input_size or spec.default_input_size,
        WeightsPolicy.DEFAULT,
    )
    return dict(net.state_dict())


def federation_card(
    rounds: int,
    sites: int,
    local_epochs: int,
    noise: float,
    clip: float,
    delta: float,
    strategy: str = "fedavg",
) -> FederatedTraining:
    """The card's ``federation`` entry; with noise, the user-level privacy spent (RDP)."""
    privacy = None
    if noise > 0:
        from opacus.accountants import RDPAccountant

        accountant: Any = RDPAccountant()
        accountant.history = [(noise, 1.0, rounds)]  # every site takes part in every round
        privacy = DifferentialPrivacy(
            epsilon=float(accountant.get_epsilon(delta)),
            delta=delta,
            accountant="rdp (opacus), site-level",
            max_grad_norm=clip,
            noise_multiplier=noise,
        )
    return FederatedTraining(
        strategy=strategy,  # type: ignore[arg-type]
        rounds=rounds,
        sites=sites,
        local_epochs=local_epochs,
        differential_privacy=privacy,
    )
