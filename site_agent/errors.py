"""Errors of the site agent.

::

    SiteError
    ├── OptionsError           training options that contradict each other (a usage error)
    ├── SiteHomeError          the site's home folder is missing, malformed or already set up
    ├── DataError              local data cannot be used
    │   ├── DataNotFoundError      no such file, and it cannot be downloaded here
    │   ├── DataFormatError        wrong npz keys, shapes, labels; unreadable manifest
    │   └── EmptyClassError        a class of the task has no training images
    ├── TaskNotFoundError      no such task in the catalog or task file
    ├── UnknownBackboneError   no such backbone in the zoo
    ├── TrainingError          training could not run (no usable data, diverged)
    ├── ExportError            ONNX export failed its checks
    │   └── ParityError            onnxruntime disagrees with PyTorch beyond tolerance
    ├── PrivacyIndexError      the retrieval index cannot satisfy its privacy settings
    ├── DeidentificationError  a DICOM identifying value was found in an output
    ├── AdapterTrainingError   the generalist's adapter cannot be trained (recipe, data, weights)
    ├── EndorsementRefusedError the site will not co-sign a consortium adapter (a check failed)
    ├── BundleExistsError      the output folder exists and is not empty
    └── LedgerError            the egress ledger is unreadable or its hash chain is broken

A corrupt or unsupported image file is :class:`protocol.ImageDecodeError`
(re-exported here): the site decodes images with the hub's own decoder.
"""

from __future__ import annotations

from protocol.errors import GscoError, ImageDecodeError

__all__ = [
    "AdapterTrainingError",
    "BundleExistsError",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "DeidentificationError",
    "EmptyClassError",
    "EndorsementRefusedError",
    "ExportError",
    "ImageDecodeError",
    "LedgerError",
    "OptionsError",
    "ParityError",
    "PrivacyIndexError",
    "SiteError",
    "SiteHomeError",
    "TaskNotFoundError",
    "TrainingError",
    "UnknownBackboneError",
]


class SiteError(GscoError):
    """Root of the site agent's errors."""


class OptionsError(SiteError):
    """Options that contradict each other or lack one they need (a usage error)."""


class SiteHomeError(SiteError):
    """The site's home folder is missing, malformed, or already initialised."""


class DataError(SiteError):
    """Local data cannot be used."""


class DataNotFoundError(DataError):
    """The data is not where it was looked for and cannot be downloaded."""


class DataFormatError(DataError):
    """The data is there but not in the expected form."""


class EmptyClassError(DataError):
    """A class of the task has no training images."""


class TaskNotFoundError(SiteError):
    """The task id is neither in the catalog nor in the given task file."""


class UnknownBackboneError(SiteError):
    """The backbone name is not in the zoo."""


class TrainingError(SiteError):
    """Training could not run to a usable model."""


class ExportError(SiteError):
    """The ONNX export failed its checks."""


class ParityError(ExportError):
    """onnxruntime and PyTorch disagree beyond the tolerance on real images."""


class PrivacyIndexError(SiteError):
    """The retrieval index cannot be built with the requested privacy settings."""


class DeidentificationError(SiteError):
    """A value of a DICOM identifying attribute was found in an output; nothing was written."""


class BundleExistsError(SiteError):
    """The output folder exists and is not empty (nothing is overwritten)."""


class LedgerError(SiteError):
    """The egress ledger cannot be read, or its hash chain is broken."""


class AdapterTrainingError(SiteError):
    """The generalist's LoRA adapter cannot be trained: recipe, examples or weights."""


class EndorsementRefusedError(SiteError):
    """This site will not co-sign a consortium adapter: something it checks does not hold."""
