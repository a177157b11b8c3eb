"""``python -m bgbias`` runs the command line, the same as the ``bgbias`` script."""
from bgbias.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
