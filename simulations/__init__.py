"""Flower simulations of many hospital sites and the evaluation report (not built yet)."""

__all__: list[str] = []
