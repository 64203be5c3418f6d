"""Each workaround of a dependency: it still works, and it is still needed.

When a dependency changes, one of these fails: then the workaround is
revisited (kept, changed, or removed), never carried forward unexamined.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import pytest


def test_faiss_still_skips_blas_for_small_batches_and_is_told_not_to() -> None:
    from hub._compat import FAISS_BLAS_THRESHOLD_CHECKED

    fresh = subprocess.run(
        [sys.executable, "-c", "import faiss; print(faiss.cvar.distance_compute_blas_threshold)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(fresh.stdout) == FAISS_BLAS_THRESHOLD_CHECKED  # the default it was written for
    import faiss

    from hub._compat import faiss_blas_for_every_batch

    before = faiss.cvar.distance_compute_blas_threshold
    try:
        faiss_blas_for_every_batch(faiss)
        assert faiss.cvar.distance_compute_blas_threshold == 1
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def test_torch_threads_are_set_for_the_block_and_restored() -> None:
    import torch

    from site_agent._compat import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_grouped_conv_sampler_matches_opacus_and_is_removed_after() -> None:
    import opacus
    import torch
    from opacus import GradSampleModule
    from torch import nn

    from site_agent._compat import OPACUS_CHECKED, grouped_conv_sampler
    from site_agent.train._dp import _grouped_conv_grad_sample

    assert opacus.__version__ == OPACUS_CHECKED  # re-check its own sampler's memory first

    def per_example(module: nn.Module) -> torch.Tensor:
        wrapped = GradSampleModule(module)
        wrapped(
            torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
        ).sum().backward()
        grads = next(iter(wrapped.parameters())).grad_sample
        wrapped._close()
        return grads.detach().clone()

    torch.manual_seed(0)
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    theirs = per_example(depthwise)
    original = GradSampleModule.GRAD_SAMPLERS.get(nn.Conv2d)
    with grouped_conv_sampler(_grouped_conv_grad_sample):
        assert GradSampleModule.GRAD_SAMPLERS[nn.Conv2d] is not original
        ours = per_example(depthwise)
    assert GradSampleModule.GRAD_SAMPLERS.get(nn.Conv2d) is original
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_opacus_still_warns_while_accounting_and_is_quietened() -> None:
    from opacus.accountants.utils import get_noise_multiplier

    from site_agent._compat import quiet_opacus_accounting

    def noise() -> float:
        return float(
            get_noise_multiplier(
                target_epsilon=8.0, target_delta=1e-5, sample_rate=0.01, steps=1000,
                accountant="rdp",
            )
        )  # fmt: skip

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise()
    assert any("opacus" in w.filename for w in caught)  # still needed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_opacus_accounting():
            noise()
    assert not caught


def test_the_legacy_onnx_exporter_still_warns_and_is_quietened() -> None:
    import torch

    from site_agent._compat import quiet_legacy_onnx_export

    net = torch.nn.Linear(3, 2)

    def export() -> None:
        torch.onnx.export(net, (torch.zeros(1, 3),), io.BytesIO(), dynamo=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export()
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)  # still needed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_legacy_onnx_export():
            export()
    assert not caught


def _stderr(program: str, *args: str, without: str, **extra: str) -> str:
    """What ``program`` writes to stderr with ``without`` unset and ``extra`` set."""
    env = {k: v for k, v in os.environ.items() if k != without}
    done = subprocess.run(
        [sys.executable, "-c", program, *args],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stderr


@pytest.mark.slow
def test_ray_still_warns_about_accelerators_unless_told() -> None:
    """What FLOWER_QUIET_ENV's Ray setting is for (Ray 2.55, the simulation engine's)."""
    from fedapp._compat import FLOWER_QUIET_ENV

    program = (
        "import ray\n"
        "ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)\n"
        "@ray.remote(num_gpus=0)\n"
        "def one(): return 1\n"
        "assert ray.get(one.remote()) == 1\n"
        "ray.shutdown()\n"
    )
    key = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"
    assert key in _stderr(program, without=key)  # still needed
    assert key not in _stderr(program, without=key, **{key: FLOWER_QUIET_ENV[key]})


@pytest.mark.slow
def test_transformers_still_warns_in_adapter_tuning_unless_told() -> None:
    """What FLOWER_QUIET_ENV's PYTHONWARNINGS is for (transformers 5.24, the adapter's sites).

    Building the adapter's trainer at a site still emits transformers'
    ``is_gradient_checkpointing`` FutureWarning; the Flower log would carry one
    per site and round. With the setting it is gone.
    """
    from fedapp._compat import FLOWER_QUIET_ENV
    from tests.adapters import model_dir

    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from site_agent.adapter import AdapterRecipe, AdapterTrainer\n"
        "AdapterTrainer(Path(sys.argv[1]), AdapterRecipe(last_layers=1)).state()\n"
    )
    quiet = FLOWER_QUIET_ENV["PYTHONWARNINGS"]
    assert "FutureWarning" in _stderr(program, str(model_dir()), without="PYTHONWARNINGS")
    assert "FutureWarning" not in _stderr(
        program, str(model_dir()), without="PYTHONWARNINGS", PYTHONWARNINGS=quiet
    )


def test_the_header_deadline_extends_the_uvicorn_it_was_written_for() -> None:
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from hub.web._compat import UVICORN_CHECKED, with_header_timeout

    # uvicorn still sets no deadline on a request's headers (timeout_keep_alive covers only
    # idle connections between requests): re-check that, and the hooks overridden, on upgrade.
    assert uvicorn.__version__ == UVICORN_CHECKED
    protocol = with_header_timeout(1.0)
    assert issubclass(protocol, AutoHTTPProtocol)
    for hook in ("connection_made", "data_received", "on_response_complete", "connection_lost"):
        assert hasattr(AutoHTTPProtocol, hook), hook


def test_the_dicom_meta_reader_is_the_pydicom_it_was_written_for() -> None:
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_preamble
    from pydicom.filewriter import write_file_meta_info

    from protocol._compat import PYDICOM_CHECKED, read_file_meta

    # Still no public way to read the meta group alone: re-check on upgrade.
    assert pydicom.__version__ == PYDICOM_CHECKED
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    end = buffer.tell()
    buffer.write(b"\x08\x00\x16\x00UI\x04\x001.2\x00")  # the data set's first element
    stream = io.BytesIO(buffer.getvalue())
    read_preamble(stream, False)
    found = read_file_meta(stream)
    assert found.MediaStorageSOPInstanceUID == "1.2.3"
    assert stream.tell() == end  # the body starts where the reader stopped
