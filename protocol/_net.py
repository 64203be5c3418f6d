"""Loopback ports for the servers a machine starts for itself (vLLM, Flower, tests)."""

from __future__ import annotations

import socket

__all__ = ["free_loopback_port"]


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after).

    Nothing listens on it when this returns, so it doubles as a port that
    refuses connections until something does.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
