"""The real MedMNIST fixtures of the site agent's tests, shared here."""

from tests.site_agent.conftest import pneumonia, pneumonia_npz

__all__ = ["pneumonia", "pneumonia_npz"]
