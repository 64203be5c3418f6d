"""How a site acts at the steps where a simulated attacker would act otherwise.

The deployed app uses :class:`SiteBehaviour` itself: every method is the honest
site's. A simulation wires its own subclass into its own ClientApp
(``simulations._faults.ScenarioBehaviour``) for the sites its scenario names;
nothing a SuperLink sends selects it, and the deployed app carries no fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedapp._site_job import SiteJob
    from fedapp._tune_job import TuneJob
    from protocol import BundleRef
    from site_agent import SiteHome
    from site_agent.data import LocalDataset

__all__ = ["SiteBehaviour"]


class SiteBehaviour:
    """The honest site. Each method is a point where a simulation's attacker deviates."""

    def training_data(self, job: SiteJob, dataset: LocalDataset) -> LocalDataset:
        """The data the site trains on."""
        return dataset

    def signs(self, job: SiteJob) -> bool:
        """Whether the site signs its bundle."""
        return True

    def before_answering(self, job: SiteJob, *, federated: bool) -> None:
        """Called before the site publishes or answers a round (a drop-out raises here)."""

    def publish(self, job: SiteJob, site: SiteHome, bundle: Path) -> BundleRef | None:
        """Publishes the bundle another way (an attacker), or None: the site agent's way."""
        return None

    def examples_declared(self, job: TuneJob, count: int) -> int:
        """The evidence examples the site says it holds."""
        return count

    def adapter_update(
        self,
        job: TuneJob,
        trained: dict[str, Any],
        received: Mapping[str, Any],
        server_round: int,
        examples: int,
    ) -> tuple[dict[str, Any], int]:
        """The adapter weights and example count the site sends back from one round."""
        return trained, examples

    def policy_answer(
        self, job: TuneJob, question: Mapping[str, Any], answer: dict[str, Any]
    ) -> dict[str, Any]:
        """The site's answer to one question of the policy fit."""
        return answer

    def declined_endorsement(
        self, job: TuneJob, received: Mapping[str, Any], card: Mapping[str, Any]
    ) -> dict[str, str] | None:
        """Why the site declines to check and co-sign the adapter (None: it does its checks)."""
        return None
