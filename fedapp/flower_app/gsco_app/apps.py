"""The ServerApp and ClientApp that Flower loads: the deployed apps of fedapp."""

from fedapp.deployed import client_app, server_app

__all__ = ["client_app", "server_app"]
