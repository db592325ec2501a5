"""``python -m simgen`` runs the command line (see :mod:`simgen.cli`)."""

from .cli import main

main()
