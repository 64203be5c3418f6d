"""Errors of the Flower app.

::

    AppError
    ├── JobError            a job that cannot run as its node and run configuration say
    ├── SiteStepError       a site's step that failed (answered to the SuperLink as an error)
    ├── SiteDroppedOutError      a site that left the run before it answered
    └── FlowerRuntimeError  Flower's runtime did not start, or stopped
"""

from __future__ import annotations

from protocol.errors import GscoError

__all__ = ["AppError", "FlowerRuntimeError", "JobError", "SiteDroppedOutError", "SiteStepError"]


class AppError(GscoError):
    """Root of the Flower app's errors."""


class JobError(AppError):
    """A job that cannot run as its node and run configuration say."""


class SiteStepError(AppError):
    """A site's step failed; the SuperLink gets it as the site's error reply."""


class SiteDroppedOutError(AppError):
    """A site left the run before it answered (a simulated drop-out, or a crash)."""


class FlowerRuntimeError(AppError):
    """Flower's runtime (a SuperLink, ``flwr run``) did not start, or stopped."""
