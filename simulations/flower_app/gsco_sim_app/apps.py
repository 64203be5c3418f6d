"""The ServerApp and ClientApp that Flower loads (defined in simulations._flower)."""

from simulations._flower import client_app, server_app

__all__ = ["client_app", "server_app"]
