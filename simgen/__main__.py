"""``python -m simgen`` runs the command line (see :mod:`simgen.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
