"""`python -m gateway`: the command line of gateway.cli."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
