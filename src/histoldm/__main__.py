"""`python -m histoldm` runs the same command line as the `histoldm` script, exit status included."""

import sys

from histoldm.cli import main

if __name__ == "__main__":
    sys.exit(main())
