"""``python -m idir_fast …`` is the ``idir-fast`` command."""
import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
