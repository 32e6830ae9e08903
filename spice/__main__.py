"""`python -m spice <command> ...`, the same as the `spice` command (so torchrun can launch it with -m)."""
import sys

from spice.cli import main

if __name__ == "__main__":
    sys.exit(main())
