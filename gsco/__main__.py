"""``python -m gsco``."""

from gsco.cli import main

main()
