"""GSCo Network: generalist-specialist collaboration for medical image diagnosis.

This package holds the ``gsco`` command line; the system itself lives in the
top-level packages ``protocol``, ``signing``, ``site_agent``, ``registry``,
``generalist``, ``hub`` and ``simulations``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
