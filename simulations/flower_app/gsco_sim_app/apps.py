"""The ServerApp and ClientApp that Flower loads: fedapp's, wired for a simulation."""

from simulations._apps import client_app, server_app

__all__ = ["client_app", "server_app"]
