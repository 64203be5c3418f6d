"""The consortium's Flower app (see fedapp.deployed)."""
