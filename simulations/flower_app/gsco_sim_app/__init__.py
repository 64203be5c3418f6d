"""The Flower app of ``gsco simulate`` (see simulations._apps)."""
